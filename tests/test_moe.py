"""Mixture-of-experts banks: quantized per expert and channel, routed forward unchanged."""

import families
import keras
import keras_hub
import numpy as np
import pytest
from conftest import keras_quantize
from reference import int4 as ref_int4

import hubquant
from hubquant import surgery
from hubquant.quantizers import unpack_int4

FAMILIES = ["mixtral", "qwen_moe", "qwen3_moe", "gpt_oss"]
INPUTS = {
    "token_ids": np.arange(3, 19, dtype="int32").reshape(2, 8),
    "padding_mask": np.ones((2, 8), "int32"),
}


def build(family):
    return families.fresh_backbone(family)


def out(backbone):
    return np.asarray(backbone(INPUTS))


def float_fraction(backbone):
    """Share of parameters in float matrices (rank >= 2), hubquant scales excluded."""
    floats = sum(
        int(np.prod(v.shape))
        for v in backbone.weights
        if "float" in str(v.dtype) and len(v.shape) >= 2 and not v.path.endswith("_scale")
    )
    return floats / sum(int(np.prod(v.shape)) for v in backbone.weights)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


def test_surgery_exact_and_experts_quantized(family):
    backbone = build(family)
    before = out(backbone)
    plan = hubquant.plan_for(backbone, "int4")
    surgery.swap_layers(backbone, plan)
    assert np.array_equal(out(backbone), before)
    hubquant.apply_plan(backbone, plan)
    experts = [e for e in plan.quantized if e.role == "moe.experts"]
    assert experts and all(e.mode == "int4" for e in experts)
    assert all(e.mode == "none" for e in plan.entries if e.role.endswith("router"))
    rank3 = [v.path for v in backbone.weights if len(v.shape) == 3 and "float" in str(v.dtype)]
    assert rank3 == [] or all(p.endswith("_scale") for p in rank3)
    rel = np.mean((out(backbone) - before) ** 2) / np.mean(before**2)
    assert rel < 0.25, rel


def test_expert_codes_equal_the_reference_per_expert_and_channel(family):
    backbone = build(family)
    plan = hubquant.plan_for(backbone, "int4")
    entry = next(e for e in plan.quantized if e.role == "moe.experts")
    bank = keras.ops.convert_to_numpy(getattr(surgery.layer_at(backbone, entry.attr), entry.matrix))
    experts, k, n = bank.shape
    canonical = np.transpose(bank, (0, 2, 1)).reshape(experts * n, k)
    hubquant.apply_plan(backbone, plan)
    layer = surgery.layer_at(backbone, entry.attr)
    codes = unpack_int4(keras.ops.convert_to_numpy(getattr(layer, f"{entry.matrix}_codes")), k)
    ref_codes, ref_scale, _ = ref_int4(canonical, entry.group_size, entry.symmetric)
    assert np.mean(codes == ref_codes) >= 0.99
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(getattr(layer, f"{entry.matrix}_scale")), ref_scale, rtol=1e-3
    )


def test_int8_is_close_and_keras_leaves_experts_in_float(family, capsys):
    ours, theirs = build(family), build(family)
    before = out(ours)
    hubquant.quantize(ours, "int8")
    rel = np.mean((out(ours) - before) ** 2) / np.mean(before**2)
    assert rel < 2e-3, rel
    keras_quantize(theirs, "int8")
    with capsys.disabled():
        print(
            f"\n{family}: float share hubquant int8 {float_fraction(ours):.1%}, keras int8 {float_fraction(theirs):.1%}"
        )
    assert float_fraction(ours) < 0.01 < 0.3 < float_fraction(theirs)


def test_round_trip_bitwise(family, tmp_path):
    backbone = build(family)
    hubquant.quantize(backbone, "mixed")
    expected = out(backbone)
    hubquant.save(backbone, tmp_path / "q", formats=("preset", "keras", "safetensors"))
    for path in ("q", "q/model.keras", "q/model.safetensors"):
        assert np.array_equal(out(hubquant.load(tmp_path / path)), expected), path


def test_gpt_oss_expert_biases_carried_exactly_and_generate_runs(tmp_path):
    """gpt-oss banks: fused, interleaved gate+up with biases; biases stay float."""
    backbone = build("gpt_oss")
    biases = {v.path: np.asarray(v) for v in backbone.weights if v.path.endswith("proj_bias")}
    assert len(biases) == 2 * len(backbone.transformer_layers)
    assert all(np.any(b != 0) for b in biases.values())
    hubquant.quantize(backbone, "int4")
    hubquant.save(backbone, tmp_path / "q")
    loaded = hubquant.load(tmp_path / "q")
    for model in (backbone, loaded):
        held = {v.path: v for v in model.weights if v.path in biases}
        assert held.keys() == biases.keys()
        for path, value in held.items():
            assert value.dtype == "float32" and np.array_equal(np.asarray(value), biases[path])
    lm = keras_hub.models.GptOssCausalLM(backbone=loaded, preprocessor=None)
    prompt = {"token_ids": np.array([[5, 6, 7, 0, 0, 0]], "int32"), "padding_mask": None}
    prompt["padding_mask"] = prompt["token_ids"] > 0
    generated = lm.generate(prompt, stop_token_ids=None)["token_ids"]
    assert generated.shape == (1, 6) and np.array_equal(generated[:, :3], [[5, 6, 7]])
    assert np.all((generated >= 0) & (generated < backbone.vocabulary_size))
