"""Streaming apply: quantizing while reading gives the in-memory result, bit for bit.

The reference is always the plain path: ``from_preset`` loads the whole float
model, ``hubquant.quantize`` quantizes it in memory.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from hubquant import api, paths, quantizers, stream, synthetic
from hubquant.errors import PresetError
from hubquant.float_preset import load_source


def _reference(preset, config):
    model = load_source(str(preset))  # from_preset, in the preset's saved dtype
    api.quantize(model, config)
    return model


def _assert_same(streamed, reference):
    paths = [w.path for w in reference.weights]
    assert [w.path for w in streamed.weights] == paths
    for a, b in zip(streamed.weights, reference.weights, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and np.array_equal(a, b), a


@pytest.mark.parametrize(
    ("family", "config"), [("gemma", "int4"), ("llama3", "mixed"), ("llama3", "int8")]
)
def test_streamed_equals_in_memory(float_presets, family, config):
    model, plan = stream.stream_quantize(str(float_presets[family]), config)
    _assert_same(model, _reference(float_presets[family], config))
    assert plan.quantized


def test_large_values_read_by_rows(float_presets, monkeypatch):
    """Every 2-D value read a block of rows at a time (embedding rows, kernel
    and untied head columns), in several quantizer blocks: same bytes."""
    monkeypatch.setattr(stream, "WHOLE_BYTES", 0)
    monkeypatch.setattr(quantizers, "_CHUNK_ELEMENTS", 4096)
    monkeypatch.setattr(quantizers, "_CHUNK_GROUPS", 64)
    reads = []
    original = quantizers.RowReader.__call__
    monkeypatch.setattr(
        quantizers.RowReader,
        "__call__",
        lambda self, a, b: reads.append(b - a) or original(self, a, b),
    )
    model, _ = stream.stream_quantize(str(float_presets["llama3"]), "int4")
    assert reads and max(reads) < 256
    _assert_same(model, _reference(float_presets["llama3"], "int4"))


@pytest.mark.parametrize("whole_bytes", [None, 0])
def test_int4_kernels_are_quantized_as_stored(float_presets, monkeypatch, whole_bytes):
    """Every int4 kernel is quantized from its stored [K, N] layout (no
    transposed float32 copy, the bulk of apply's time before), whether it is
    read whole or a block of rows at a time, streamed or in memory."""
    if whole_bytes is not None:
        monkeypatch.setattr(stream, "WHOLE_BYTES", whole_bytes)
    seen = []
    original = quantizers._int4_columns
    monkeypatch.setattr(
        quantizers, "_int4_columns", lambda c, *a: seen.append(c.shape) or original(c, *a)
    )
    for family in ("gemma", "llama3"):
        model, plan = stream.stream_quantize(str(float_presets[family]), "int4")
        kernels = sorted(
            e.shape for e in plan.quantized if e.mode == "int4" and e.matrix == "kernel"
        )
        assert kernels and sorted(seen) == kernels
        seen.clear()
        _assert_same(model, _reference(float_presets[family], "int4"))
        assert sorted(seen) == kernels
        seen.clear()


@pytest.fixture(scope="module")
def bf16_preset(tmp_path_factory):
    path = tmp_path_factory.mktemp("bf16") / "gemma"
    synthetic.gemma_causal_lm(seed=3, dtype="bfloat16").save_to_preset(str(path))
    return path


def test_bf16_preset_keeps_float_layers_bf16(bf16_preset):
    model, plan = stream.stream_quantize(str(bf16_preset), "int8")
    norms = [w for w in model.weights if w.path.endswith("norm/scale")]
    assert norms and {w.dtype for w in norms} == {"bfloat16"}
    assert plan.dtype == "bfloat16"
    _assert_same(model, _reference(bf16_preset, "int8"))


def test_sharded_preset(tmp_path):
    preset = tmp_path / "sharded"
    synthetic.llama3_causal_lm(seed=1).save_to_preset(str(preset), max_shard_size=0.0002)
    assert len(list(preset.glob("model*.weights.h5"))) > 1
    model, _ = stream.stream_quantize(str(preset), "int4")
    _assert_same(model, _reference(preset, "int4"))


def test_streamed_model_saves_and_reloads(float_presets, tmp_path, inputs):
    model, _ = stream.stream_quantize(str(float_presets["gemma"]), "int4")
    api.save(model, tmp_path / "out")
    again = api.load(tmp_path / "out")
    for a, b in zip(model.weights, again.weights, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(again.generate("a b", max_length=6), str)


def test_missing_layer_in_weights_file(float_presets, tmp_path):
    import shutil

    preset = tmp_path / "damaged"
    shutil.copytree(float_presets["gemma"], preset)
    with h5py.File(preset / "model.weights.h5", "a") as f:
        names = []
        f.visit(lambda n: names.append(n) if n.endswith("ffw_linear/vars") else None)
        del f[names[0]]
    with pytest.raises(PresetError, match=r"has no weights for 'decoder_block_\d/ffw_linear'"):
        stream.stream_quantize(str(preset), "int8")


def test_dry_run_reads_no_weights(float_presets, tmp_path, monkeypatch):
    """The Plan comes from shapes alone: a dry run opens no weights file."""
    import shutil

    preset = tmp_path / "no_weights"
    shutil.copytree(float_presets["gemma"], preset)
    (preset / "model.weights.h5").unlink()
    pending = stream.prepare(str(preset), "int4")
    assert pending.plan.totals()["params"] > 0
    assert all(w._value is None for w in pending.model.backbone.weights)


def test_hugging_face_folder(fresh, tmp_path):
    """A float Hugging Face folder streams through KerasHub's own converter."""
    folder = tmp_path / "hf"
    fresh("llama3").export_to_transformers(str(folder))
    model, _ = stream.stream_quantize(str(folder), "int4")
    _assert_same(model, _reference(folder, "int4"))


# -- calibrated configs: matrices read from disk when their block runs --------
def _calibrated_config(tmp_path):
    from hubquant.config import parse_config

    (tmp_path / "cal.txt").write_text(synthetic._CORPUS * 4)
    text = (
        "default: {mode: int4, group_size: 16, algorithm: gptq}\n"
        "rules:\n  - match: {role: 'mlp.*'}\n    algorithm: awq\n"
        "  - match: {role: attn.o}\n    algorithm: rtn\n"
        f"calibration: {{files: ['{tmp_path}/cal.txt'], num_samples: 4, seq_len: 16}}\n"
    )
    return parse_config(text, "calibrated.yaml")


def _blocks_in_float(model) -> set:
    """Blocks holding a planned matrix in float (read and not yet quantized)."""
    blocks = set()
    for i, block in enumerate(paths.backbone_of(model).transformer_layers):
        for layer in block._flatten_layers():
            specs = getattr(layer, "hubquant_specs", None)
            if (
                specs
                and "hubquant_later" not in vars(layer)
                and not getattr(layer, "_is_quantized", False)
            ):
                floats = layer._float_matrices()
                if any(getattr(layer, floats[n].attr)._value is not None for n in specs):
                    blocks.add(i)
    return blocks


@pytest.mark.parametrize("which", ["gemma", "bf16"])
def test_calibrated_streamed_equals_in_memory(float_presets, bf16_preset, which, tmp_path):
    preset = bf16_preset if which == "bf16" else float_presets[which]
    config = _calibrated_config(tmp_path)
    pending = stream.prepare(str(preset), config)
    seen = []
    read_now = stream.read_now

    def spy(layer):
        read_now(layer)
        seen.append(_blocks_in_float(pending.model))

    stream.read_now = spy
    try:
        model, plan = stream.read(pending, calibration=config.calibration)
    finally:
        stream.read_now = read_now
    assert seen and all(len(blocks) == 1 for blocks in seen)  # one block at a time
    reference = load_source(str(preset))
    assert api.quantize(reference, config).entries == plan.entries
    _assert_same(model, reference)


def test_cli_streams_a_calibrated_preset(float_presets, tmp_path, monkeypatch, capsys):
    from hubquant import cli, float_preset

    config = _calibrated_config(tmp_path)
    (tmp_path / "c.yaml").write_text(config.text)
    monkeypatch.setattr(float_preset, "load_source", lambda *a, **k: pytest.fail("loaded whole"))
    args = ["apply", "--preset", str(float_presets["llama3"]), "--config", str(tmp_path / "c.yaml")]
    assert cli.main([*args, "--output", str(tmp_path / "out"), "--quiet"]) == 0
    plan = api.load(tmp_path / "out").backbone.hubquant_plan
    assert {"gptq", "awq"} <= {e.algorithm for e in plan.quantized}


def test_calibrated_hugging_face_folder_streams(fresh, tmp_path):
    folder = tmp_path / "hf"
    fresh("llama3").export_to_transformers(str(folder))
    config = _calibrated_config(tmp_path)
    model, plan = stream.read(stream.prepare(str(folder), config), calibration=config.calibration)
    reference = load_source(str(folder))
    assert api.quantize(reference, config).entries == plan.entries
    _assert_same(model, reference)


def _edit_vocabulary(folder, size) -> None:
    """Set the vocabulary size a preset's config states (``size(old) -> new``)."""
    places = {
        "config.json": [("vocab_size",), ("config", "vocabulary_size")],
        "task.json": [("config", "backbone", "config", "vocabulary_size")],
    }
    for name, keys in places.items():
        if not (folder / name).is_file():
            continue
        data = json.loads((folder / name).read_text())
        for path in keys:
            node = data
            for key in path[:-1]:
                node = node.get(key, {})
            if path[-1] in node:
                node[path[-1]] = size(node[path[-1]])
        (folder / name).write_text(json.dumps(data))


@pytest.mark.parametrize("config", ["int8", "int4"])
def test_keras_preset_whose_config_disagrees_with_its_weights_is_refused(
    float_presets, tmp_path, config
):
    import shutil

    preset = tmp_path / "p"
    shutil.copytree(float_presets["gemma"], preset)
    _edit_vocabulary(preset, lambda v: v + 1)
    with pytest.raises(PresetError) as caught:
        stream.stream_quantize(str(preset), config)
    assert str(caught.value) == (
        f"preset '{preset}': layer 'token_embedding': the weights file holds its embeddings "
        "as [120, 96] ([out, in]); the config makes it [121, 96]."
    )


def test_hugging_face_config_that_disagrees_with_its_weights_is_refused(fresh, tmp_path):
    folder = tmp_path / "hf"
    fresh("llama3").export_to_transformers(str(folder))
    _edit_vocabulary(folder, lambda v: v + 1)
    with pytest.raises(
        PresetError,
        match=r"the weights for 'token_embedding/embeddings' have "
        r"shape \[269, 80\]; the preset's config makes it \[270, 80\]\.",
    ):
        stream.stream_quantize(str(folder), "int8")
    _edit_vocabulary(folder, lambda v: 2**31)
    with pytest.raises(PresetError, match=r"its config describes 343,597,518,480 weights"):
        stream.prepare(str(folder), "int8")
