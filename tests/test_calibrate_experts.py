"""Expert banks calibrated per expert from the tokens routed to them."""

from __future__ import annotations

import families
import numpy as np
import pytest
from keras import ops

import hubquant
from hubquant import quantizers, synthetic
from hubquant.calibrate import experts
from hubquant.config import parse_config

# Only the expert banks are quantized, so block 0's bank sees the same inputs
# in the float and the quantized model.
CONFIG = (
    "default: {{mode: none}}\n"
    "rules:\n  - match: {{role: moe.experts}}\n"
    "    mode: int4\n    group_size: 32\n    algorithm: {algorithm}\n"
)
RNG = np.random.default_rng(0)
CALIBRATION = RNG.integers(4, families.VOCAB, (32, 16)).astype("int32")
HELD = RNG.integers(4, families.VOCAB, (4, 16)).astype("int32")
HELD_OUT = {"token_ids": HELD, "padding_mask": np.ones_like(HELD)}


def _backbone(name):
    backbone = families.fresh_backbone(name)
    synthetic.add_activation_outliers(backbone, seed=0)
    return backbone


def _quantized(name, algorithm, calibration=CALIBRATION):
    backbone = _backbone(name)
    config = parse_config(CONFIG.format(algorithm=algorithm), "c.yaml")
    plan = hubquant.apply_plan(
        backbone, hubquant.plan_for(backbone, config), calibration=calibration
    )
    return backbone, plan


def _moe(backbone):
    """Block 0's sparse block, expert bank and router layer."""
    block = backbone.transformer_layers[0]
    moe = next(
        getattr(block, a)
        for a in ("_sparse_moe_block", "sparse_moe_block", "mlp")
        if hasattr(block, a)
    )
    bank = getattr(moe, "expert_bank", None) or moe.experts
    router = getattr(moe, "_sparse_feedforward_gate_dense", None) or moe.router.router_dense
    return moe, bank, router


def _held_out_bank_inputs(name):
    """Block 0's bank input rows on the held-out tokens and the float bank's
    outputs there, and which experts each token goes to ``[experts, T]``."""
    backbone = _backbone(name)
    moe, bank, router = _moe(backbone)
    seen = {}
    for layer, key in ((bank, "x"), (router, "logits")):
        layer.call = _keep(type(layer).call.__get__(layer), seen, key)
    backbone(HELD_OUT)
    x, logits = seen["x"], seen["logits"]
    top = np.argsort(-logits, axis=-1)[:, : moe.top_k]
    routed = np.stack([(top == e).any(axis=1) for e in range(logits.shape[1])])
    return x, np.asarray(type(bank).call(bank, x)), routed


def _keep(call, seen, key):
    def wrapped(x, *args, **kwargs):
        out = call(x, *args, **kwargs)
        seen[key] = np.asarray(x if key == "x" else out)
        return out

    return wrapped


def _bank_error(name, algorithm, held) -> tuple[float, object]:
    """Relative error of every expert's output on the held-out tokens routed to it."""
    x, want, routed = held
    backbone, plan = _quantized(name, algorithm)
    got = np.asarray(_moe(backbone)[1](x))
    error = np.sum(np.sum((got - want) ** 2, axis=-1) * routed)
    return float(error / np.sum(np.sum(want**2, axis=-1) * routed)), backbone, plan


@pytest.mark.parametrize("name", ["mixtral", "gpt_oss"])
def test_calibrated_experts_beat_round_to_nearest_on_held_out_inputs(name, tmp_path):
    held = _held_out_bank_inputs(name)
    rtn = _bank_error(name, "rtn", held)[0]
    for algorithm in ("gptq", "awq"):
        error, backbone, plan = _bank_error(name, algorithm, held)
        assert error < 0.8 * rtn, algorithm
        assert {e.algorithm for e in plan.quantized} == {algorithm}
        assert plan.notes == ()
        hubquant.save(backbone, tmp_path / algorithm, formats=("preset", "safetensors"))
        for path in (algorithm, f"{algorithm}/model.safetensors"):
            back = np.asarray(hubquant.load(tmp_path / path)(HELD_OUT))
            np.testing.assert_array_equal(back, np.asarray(backbone(HELD_OUT)), err_msg=path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen_moe", "qwen3_moe"])
def test_calibrated_experts_on_the_qwen_families(name):
    held = _held_out_bank_inputs(name)
    rtn = _bank_error(name, "rtn", held)[0]
    gptq, _, plan = _bank_error(name, "gptq", held)
    assert gptq < 0.8 * rtn
    assert plan.notes == ()


def test_expert_with_too_few_tokens_falls_back_to_rtn_and_is_named():
    few = CALIBRATION[:1, :12]  # 12 tokens x top 2 of 4 experts: each < 16
    backbone, plan = _quantized("mixtral", "gptq", calibration=few)
    assert len(plan.notes) == 3 * 2  # three matrices in each of the two blocks
    assert "experts [0, 1, 2, 3] received fewer than 16 calibration tokens" in plan.notes[0]
    float_bank = _backbone("mixtral").transformer_layers[0]._sparse_moe_block.expert_bank
    bank = backbone.transformer_layers[0]._sparse_moe_block.expert_bank
    name = "_expert_feedforward_gate_dense"
    w = bank._float_matrices()[name].to_matrix(getattr(float_bank, name))
    want = quantizers.quantize(w, "int4", 32, False)
    np.testing.assert_array_equal(np.asarray(getattr(bank, f"{name}_codes")), want.codes)


def test_tokens_go_to_their_top_k_experts():
    logits = RNG.normal(size=(50, 6)).astype("float32")
    tokens = experts.expert_tokens(logits, 2)
    top = np.asarray(ops.top_k(logits, 2)[1])
    for e, rows in enumerate(tokens):
        np.testing.assert_array_equal(rows, np.flatnonzero((top == e).any(axis=1)))


@pytest.mark.parametrize("name", ["mixtral", "gpt_oss"])
def test_down_projection_input_is_recovered_exactly(name):
    """The probed intermediate, times the real down bank (plus its bias), is
    the bank's output; for Mixtral it is also ``up * silu(gate)``."""
    backbone = _backbone(name)
    bank = _moe(backbone)[1]
    down = "_expert_feedforward_output_dense" if name == "mixtral" else "down_proj"
    x = RNG.normal(size=(10, backbone.hidden_dim)).astype("float32")
    hidden = experts.down_inputs(bank, type(bank).call.__get__(bank), x, down)
    weights = np.asarray(getattr(bank, down))
    bias = np.asarray(bank.down_proj_bias)[:, None, :] if name == "gpt_oss" else 0.0
    np.testing.assert_allclose(
        np.einsum("eti,eih->eth", hidden, weights) + bias, np.asarray(bank(x)), atol=1e-5
    )
    if name == "mixtral":
        gate = np.einsum("th,ehm->etm", x, np.asarray(bank._expert_feedforward_gate_dense))
        up = np.einsum("th,ehm->etm", x, np.asarray(bank._expert_feedforward_intermediate_dense))
        np.testing.assert_allclose(hidden, up * gate / (1 + np.exp(-gate)), atol=1e-5)
