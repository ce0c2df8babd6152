"""GPTQ and AWQ through the whole pipeline: config, block-by-block calibration,
quality against round-to-nearest on held-out inputs, determinism, save/load."""

from __future__ import annotations

import numpy as np
import pytest

import hubquant
from hubquant import synthetic
from hubquant.config import parse_config
from hubquant.errors import ConfigError

DIMS = dict(hidden_dim=64, intermediate_dim=128, num_query_heads=4, num_key_value_heads=4)
BLOCKS_ONLY = (
    "rules:\n  - match: {role: 'embed*'}\n    mode: none\n"
    "  - match: {role: lm_head}\n    mode: none\n"
)


def _config(algorithm: str, extra: str = "") -> str:
    head = f"default: {{mode: int4, group_size: 32, algorithm: {algorithm}}}\n"
    return head + BLOCKS_ONLY + extra


def _llama(seed: int = 0):
    lm = synthetic.llama3_causal_lm(seed=seed, **DIMS)
    synthetic.add_activation_outliers(lm.backbone, seed)
    return lm


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(1)
    vocab = synthetic.llama3_tokenizer().vocabulary_size()
    calibration = rng.integers(4, vocab, (8, 32)).astype("int32")
    held_out = rng.integers(4, vocab, (4, 32)).astype("int32")
    return calibration, {"token_ids": held_out, "padding_mask": np.ones_like(held_out)}


@pytest.fixture(scope="module")
def quantized(tokens):
    """The tiny Llama quantized by each algorithm (and float), built once."""
    models = {"float": _llama()}
    for algorithm in ("rtn", "gptq", "awq", "imatrix"):
        lm = _llama()
        plan = hubquant.plan_for(lm, parse_config(_config(algorithm), "c.yaml"))
        models[algorithm] = (lm, hubquant.apply_plan(lm, plan, calibration=tokens[0]))
    return models


def _relative_error(model, reference, inputs) -> float:
    got, want = np.asarray(model.backbone(inputs)), np.asarray(reference.backbone(inputs))
    return float(np.mean((got - want) ** 2) / np.mean(want**2))


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_calibrated_beats_round_to_nearest_on_held_out_inputs(quantized, tokens, algorithm):
    reference = quantized["float"]
    rtn = _relative_error(quantized["rtn"][0], reference, tokens[1])
    assert _relative_error(quantized[algorithm][0], reference, tokens[1]) < 0.8 * rtn


def test_imatrix_beats_round_to_nearest_on_held_out_inputs(quantized, tokens):
    """The same rounding, each input channel weighted by its mean x^2: the outlier
    channels' weights are kept closer, and the outputs follow."""
    reference = quantized["float"]
    rtn = _relative_error(quantized["rtn"][0], reference, tokens[1])
    assert _relative_error(quantized["imatrix"][0], reference, tokens[1]) < 0.9 * rtn


LAYERS = (
    "_self_attention_layer._query_dense",
    "_self_attention_layer._output_dense",
    "_feedforward_gate_dense",
    "_feedforward_output_dense",
)
# The norm each layer reads: AWQ folds its scale there (recipe ``input_norm``).
NORMS = {
    "_self_attention_layer._query_dense": "_self_attention_layernorm",
    "_feedforward_gate_dense": "_feedforward_layernorm",
}


class _Rows:
    def add(self, x):
        self.x = np.asarray(x)


@pytest.mark.parametrize("algorithm", ["gptq", "awq", "imatrix"])
def test_layer_output_error_below_rtn(quantized, tokens, algorithm):
    """Block 1's layers, on the float model's held-out inputs to each layer."""
    from hubquant.calibrate.blocks import recording

    reference = quantized["float"]
    layers = {name: _at(reference, name) for name in LAYERS}
    rows = {name: _Rows() for name in LAYERS}
    with recording(layers, rows):
        reference.backbone(tokens[1])
    for name in LAYERS:
        if algorithm == "awq" and name == "_feedforward_output_dense":
            continue  # its scale is folded into mlp.up's rows (input_from): see test_fold
        want = rows[name].x @ _matrix(layers[name])
        rtn, calibrated = (
            np.mean((rows[name].x @ _effective(quantized[a][0], reference, name) - want) ** 2)
            for a in ("rtn", algorithm)
        )
        assert calibrated < rtn, name


def _effective(model, reference, name) -> np.ndarray:
    """The layer's kernel as seen by the float model's inputs: where AWQ folded
    ``s`` into the norm before it, the norm now divides by ``s``."""
    matrix = _matrix(_at(model, name))
    if name not in NORMS:
        return matrix
    ratio = np.asarray(_at(model, NORMS[name]).scale) / np.asarray(
        _at(reference, NORMS[name]).scale
    )
    return matrix * ratio[:, None]


def _at(model, dotted):
    obj = model.backbone.transformer_layers[1]
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _matrix(layer) -> np.ndarray:
    """The (dequantized) kernel as ``[K, N]``."""
    from hubquant.layers.layout import KernelLayout

    shape = tuple(layer.kernel.shape)
    equation = getattr(layer, "equation", None)
    layout = KernelLayout.einsum(equation, shape) if equation else KernelLayout.dense(shape)
    return layout.to_matrix(layer.kernel).T


def test_plan_records_the_algorithm_and_its_options(quantized):
    plan = quantized["gptq"][1]
    entry = next(e for e in plan.entries if e.role == "attn.q")
    assert entry.algorithm == "gptq"
    assert entry.algorithm_options == {"act_order": True, "block_size": 128, "damping": 0.01}
    awq = next(e for e in quantized["awq"][1].entries if e.role == "mlp.down")
    assert awq.algorithm_options == {"clip": True, "gptq": True, "grid": 20}


def test_deterministic_for_fixed_inputs(quantized, tokens):
    lm = _llama()
    plan = hubquant.plan_for(lm, parse_config(_config("gptq"), "c.yaml"))
    hubquant.apply_plan(lm, plan, calibration=tokens[0])
    first = quantized["gptq"][0]
    for a, b in zip(lm.backbone.weights, first.backbone.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("algorithm", ["gptq", "awq", "imatrix"])
def test_save_and_load_bitwise(quantized, tokens, algorithm, tmp_path):
    lm = quantized[algorithm][0]
    hubquant.save(lm, tmp_path / "out", formats=("preset", "safetensors"))
    for path in (tmp_path / "out", tmp_path / "out" / "model.safetensors"):
        back = hubquant.load(path)
        np.testing.assert_array_equal(np.asarray(back(tokens[1])), np.asarray(lm(tokens[1])))


def test_awq_layers_are_refused_by_the_hf_export(quantized, tmp_path):
    from hubquant.errors import HubquantError

    lm = quantized["awq"][0]
    with pytest.raises(HubquantError, match="quantized with AWQ, it holds a per-input-channel"):
        hubquant.save(lm, tmp_path / "out", formats=("hf",))
    assert not (tmp_path / "out").exists()


def test_config_section_and_rtn_fallback_for_the_token_table(tmp_path):
    """Calibration text from the config; the token table is quantized by RTN, noted."""
    (tmp_path / "cal.txt").write_text(synthetic._CORPUS * 4)
    text = (
        "default: {mode: int4, group_size: 32, algorithm: gptq}\n"
        f"calibration: {{files: ['{tmp_path}/*.txt'], num_samples: 4, seq_len: 16}}\n"
    )
    lm = _llama()
    plan = hubquant.quantize(lm, parse_config(text, "c.yaml"))
    assert {e.algorithm for e in plan.quantized if e.block is not None} == {"gptq"}
    assert {e.algorithm for e in plan.entries if e.block is None} == {"rtn"}
    assert plan.notes == (
        "token_embedding (embed): gptq is not applied outside the transformer blocks; "
        "quantized by round-to-nearest",
    )


def test_calibration_windows_open_with_the_start_token_as_the_model_is_run(tmp_path):
    """Each window cut from the files is the start token, then the text from a
    seeded offset: the activations GPTQ sees are those the model has in use."""
    from hubquant.calibrate.calibration import Calibration, calibration_tokens
    from hubquant.text import token_ids

    (tmp_path / "cal.txt").write_text(synthetic._CORPUS * 4)
    lm = _llama()
    cal = Calibration(files=(str(tmp_path / "cal.txt"),), num_samples=6, seq_len=16)
    windows = calibration_tokens(lm, cal, report=lambda line: None)
    ids = token_ids(lm.preprocessor.tokenizer, (tmp_path / "cal.txt").read_text()).tolist()
    assert windows.shape == (6, 16)
    assert (windows[:, 0] == lm.preprocessor.tokenizer.start_token_id).all()
    for row in windows[:, 1:].tolist():
        assert any(ids[i : i + 15] == row for i in range(len(ids) - 14))


# Config and CLI errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  - {algorithm: gptq, gptq: {damping: 2}}\n",
            "c.yaml: rule 1: key 'gptq.damping': expected a number in (0, 1]: the fraction "
            "of the mean Hessian diagonal added to it. Received: gptq.damping=2",
        ),
        (
            "rules:\n  - {awq: {grids: 4}}\n",
            "c.yaml: rule 1: key 'awq.grids': unknown key; expected one of grid, clip, gptq. "
            "Received: awq.grids=4",
        ),
        (
            "calibration: {files: [a.txt], seq_len: 0}\n",
            "c.yaml: calibration: key 'seq_len': expected a positive integer. Received: seq_len=0",
        ),
        (
            "calibration: {file: a.txt}\n",
            "c.yaml: key 'calibration.file': unknown key; expected one of files, num_samples, "
            "seq_len, seed, generate. Received: calibration.file='a.txt'",
        ),
    ],
)
def test_config_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert str(info.value) == message


def test_calibration_glob_matching_nothing_is_a_config_error(tmp_path):
    lm = _llama()
    section = f"calibration: {{files: ['{tmp_path}/none*.txt']}}\n"
    with pytest.raises(ConfigError, match="key 'files': no file matches"):
        hubquant.quantize(lm, parse_config(_config("gptq", section), "c.yaml"))


def test_layers_reading_one_input_share_its_hessian(quantized, tokens, monkeypatch):
    """q, k and v read the same tensor: one Gram matrix serves all three, and
    it equals ``2 X^T X / rows`` of the rows each layer saw."""
    from hubquant.calibrate import blocks
    from hubquant.calibrate.blocks import HessianStats, recording

    computed = []
    gram = blocks._gram
    monkeypatch.setattr(blocks, "_gram", lambda x: computed.append(1) or gram(x))

    reference = quantized["float"]
    names = [f"_self_attention_layer._{p}_dense" for p in ("query", "key", "value")]
    layers = {name: _at(reference, name) for name in names}
    stats = {name: HessianStats(layers[name].kernel.shape[0]) for name in names}
    seen = {name: _Rows() for name in names}
    with recording(layers, stats):
        reference.backbone(tokens[1])
    assert len(computed) == 1  # one batch, one input: one Gram matrix
    with recording(layers, seen):
        reference.backbone(tokens[1])
    x = seen[names[0]].x.astype(np.float64)
    want = 2 * x.T @ x / len(x)
    for name in names:
        np.testing.assert_array_equal(seen[name].x, seen[names[0]].x)
        np.testing.assert_array_equal(stats[name].hessian(), stats[names[0]].hessian())
        np.testing.assert_allclose(stats[name].hessian(), want, rtol=1e-4, atol=1e-5)
