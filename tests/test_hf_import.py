"""Import of compressed-tensors checkpoints: written by compressed-tensors itself, or by hubquant."""

import json
import shutil

import numpy as np
import pytest
from conftest import logits
from test_hf_export import assert_agrees

import hubquant
from hubquant.config import parse_config
from hubquant.errors import ArtefactError
from hubquant.io.hf_export import export_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors.quantization")
ct_compressors = pytest.importorskip("compressed_tensors.compressors")


def _groups(symmetric: bool) -> dict:
    """int4 g40 for every Linear, int8 per channel for down_proj (a regex beats a class)."""
    return {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 4,
                "type": "int",
                "symmetric": symmetric,
                "strategy": "group",
                "group_size": 40,
            },
        },
        "group_1": {
            "targets": ["re:.*down_proj"],
            "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
        },
    }


def _observe_min_max(model) -> None:
    """Calibration-free weight observer: each group's min/max -> scale and zero point."""
    from compressed_tensors.quantization.utils import calculate_qparams

    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None:
            continue
        args, w = scheme.weights, module.weight.data
        size = w.shape[1] if args.strategy == "channel" else args.group_size
        grouped = w.reshape(w.shape[0], -1, size)
        scale, zero = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
        module.weight_scale.data = scale.reshape(module.weight_scale.shape)
        module.weight_zero_point.data = zero.reshape(module.weight_zero_point.shape).to(
            module.weight_zero_point.dtype
        )


def write_ct_checkpoint(folder, symmetric: bool, token_ids) -> np.ndarray:
    """A tiny Llama quantized and saved by compressed-tensors' own compressor.

    Returns compressed-tensors' logits for ``token_ids``: the compressed
    model's first forward pass decompresses it with compressed-tensors' code.
    """
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=269,  # the shapes of the tiny Llama 3 preset (conftest): compiled once
        hidden_size=80,
        intermediate_size=200,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    qc = ct.QuantizationConfig(config_groups=_groups(symmetric), ignore=["lm_head"])
    ct.apply_quantization_config(model, qc, show_progress=False)
    _observe_min_max(model)
    compressor = ct_compressors.ModelCompressor.from_pretrained_model(model, "pack-quantized")
    compressor.compress_model(model)
    # The asymmetric one in shards with an index, as large checkpoints come.
    model.save_pretrained(str(folder), max_shard_size="50KB" if not symmetric else "1GB")
    compressor.update_config(str(folder))
    with torch.no_grad():
        return model(torch.tensor(token_ids, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def ct_folders(tmp_path_factory, inputs):
    """{symmetric: (folder, compressed-tensors' logits)}."""
    root = tmp_path_factory.mktemp("ct")
    return {
        sym: (root / str(sym), write_ct_checkpoint(root / str(sym), sym, inputs["token_ids"]))
        for sym in (True, False)
    }


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_compressed_tensors_checkpoint_imports_and_agrees(ct_folders, symmetric, inputs):
    folder, theirs = ct_folders[symmetric]
    lm = hubquant.load(folder)
    plan = lm.backbone.hubquant_plan
    modes = {(e.hf.rsplit(".", 1)[-1], e.mode, e.group_size, e.symmetric) for e in plan.quantized}
    assert modes == {
        *((p, "int4", 40, symmetric) for p in ("q_proj", "k_proj", "v_proj", "o_proj")),
        *((p, "int4", 40, symmetric) for p in ("gate_proj", "up_proj")),
        ("down_proj", "int8", -1, True),
    }
    ours = logits(lm, inputs)
    assert_agrees(theirs, ours)
    if symmetric:  # transformers 5.24 loads only symmetric int4 (see README)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        with torch.no_grad():
            loaded = model(torch.tensor(inputs["token_ids"], dtype=torch.long)).logits.numpy()
        assert_agrees(loaded, ours)


def asymmetric_int4(group_size):
    """int4 asymmetric projections; a tied table stays float (exported as it is held)."""
    return parse_config(
        f"default: {{mode: int4, group_size: {group_size}, symmetric: false}}\n"
        "rules:\n  - match: {role: 'embed*'}\n    mode: none\n"
        "  - match: {role: lm_head}\n    mode: none\n",
        f"asym-g{group_size}",
    )


def test_export_then_import_gives_equal_outputs(fresh, inputs, tmp_path):
    """Gemma, asymmetric int4 (zero points packed along the output axis), with its
    tokenizer. Mistral, Qwen2 and Qwen3 round-trip in test_hf_export.py."""
    lm = fresh("gemma")
    plan = hubquant.quantize(lm, asymmetric_int4(32))
    export_hf(lm, tmp_path)
    back = hubquant.load(tmp_path)
    assert type(back).__name__ == type(lm).__name__
    assert back.preprocessor is not None
    linear = {e.hf: e.mode for e in plan.quantized if e.matrix != "embeddings"}
    assert {e.hf: e.mode for e in back.backbone.hubquant_plan.quantized} == linear
    ours, theirs = logits(lm, inputs), logits(back, inputs)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-6 * np.abs(ours).max())


def _edited(folder, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config["quantization_config"])
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _activations(qc):
    qc["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "int"}


def _fp8(qc):
    qc["config_groups"]["group_1"]["weights"]["type"] = "float"


def _kv_cache(qc):
    qc["kv_cache_scheme"] = {"num_bits": 8, "type": "float"}


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            _activations,
            "module model.layers.0.self_attn.q_proj uses input_activations "
            "quantization \\(int8\\) \\(config group 'group_0'\\)",
        ),
        (_fp8, "module model.layers.0.mlp.down_proj uses float8 weights"),
        (_kv_cache, "quantization_config uses kv_cache_scheme="),
    ],
    ids=["activations", "fp8", "kv-cache"],
)
def test_what_hubquant_cannot_hold_is_refused_by_module(ct_folders, tmp_path, edit, message):
    folder = _edited(ct_folders[True][0], tmp_path, edit)
    with pytest.raises(ArtefactError, match=message):
        hubquant.load(folder)


def _rewrite_header(file, edit) -> None:
    """Rewrite a safetensors file with ``edit(size, header, data) -> bytes``."""
    raw = file.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    file.write_bytes(edit(size, json.loads(raw[8 : 8 + size]), raw[8 + size :]))


def _pack(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _first(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _set(key, value):
    def edit(_, header, data):
        header[_first(header)][key] = value
        return _pack(header, data)

    return edit


def _overlap(_, header, data):
    names = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")
    a, b = header[names[0][1]], header[names[1][1]]
    b["data_offsets"] = a["data_offsets"]
    b["dtype"], b["shape"] = a["dtype"], a["shape"]
    return _pack(header, data)


F = "'{file}'"
HEADER_CASES = {
    "length 2^63": (lambda s, h, d: (1 << 63).to_bytes(8, "little") + d, f"{F} is not a readable"),
    "length 2^64-1": (lambda s, h, d: b"\xff" * 8 + d, f"{F} is not a readable"),
    "length 2^40": (lambda s, h, d: (1 << 40).to_bytes(8, "little") + d, "claims 1099511627776"),
    "a list header": (lambda s, h, d: _pack([1, 2], d), "header is not an object"),
    "offsets past the end": (_set("data_offsets", [0, 1 << 40]), "needs"),
    "negative offsets": (_set("data_offsets", [-8, 0]), "invalid data_offsets"),
    "missing data_offsets": (_set("data_offsets", None), "invalid data_offsets"),
    "dtype not matching the bytes": (_set("dtype", "F64"), "needs"),
    "shape not matching the bytes": (_set("shape", [3, 3, 3]), "needs"),
    "overlapping offsets": (_overlap, "overlaps another tensor"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_broken_safetensors_headers_are_refused_in_one_line(case, ct_folders, tmp_path, capsys):
    from hubquant import cli

    folder = tmp_path / "hf"
    shutil.copytree(ct_folders[True][0], folder)
    file = folder / "model.safetensors"
    edit, expected = HEADER_CASES[case]
    _rewrite_header(file, edit)
    code = cli.main(["export", str(folder), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"hubquant: error: '{file}'") and expected.format(file=file) in err
    assert not (tmp_path / "out").exists()


def _backtracking_targets(qc):
    for group in qc["config_groups"].values():
        group["targets"] = ["re:(.|.)*Z", *group["targets"]]


def test_backtracking_target_regex_matches_in_linear_time(ct_folders, tmp_path, inputs):
    """``re:(.|.)*Z`` takes 2^30 steps on a module name with Python's re; RE2 is linear."""
    folder, theirs = ct_folders[True]
    lm = hubquant.load(_edited(folder, tmp_path, _backtracking_targets))
    assert_agrees(theirs, logits(lm, inputs))


def _groups_as_list(qc):
    qc["config_groups"] = list(qc["config_groups"].values())


def _group_size(size):
    def edit(qc):
        qc["config_groups"]["group_0"]["weights"]["group_size"] = size

    return edit


def _bad_regex(qc):
    qc["ignore"] = ["re:(?<=x)lm_head"]


@pytest.mark.parametrize(
    "edit,message",
    [
        (_groups_as_list, "config_groups must map group names to groups. Received: list"),
        (_group_size(0), "group_0.weights.group_size must be a positive integer. Received: 0"),
        (_group_size(-4), "group_size must be a positive integer. Received: -4"),
        (_bad_regex, "quantization_config.ignore: 're:\\(\\?<=x\\)lm_head' is not a usable"),
    ],
    ids=["groups-list", "group-size-0", "group-size-negative", "lookbehind"],
)
def test_malformed_quantization_config_is_refused(ct_folders, tmp_path, edit, message):
    with pytest.raises(ArtefactError, match=message):
        hubquant.load(_edited(ct_folders[True][0], tmp_path, edit))
