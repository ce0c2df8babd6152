"""Every recipe beyond Gemma and Llama on a tiny trained-like backbone of its family.

Each backbone is built once per session (``float_models``); tests get fresh
float copies rebuilt from its config and weights, so in-place quantization in
one test does not leak into another.
"""

import gc

import families
import keras
import numpy as np
import pytest
from keras.quantizers import Int4QuantizationConfig

import hubquant
from hubquant import surgery
from hubquant.recipe import shipped_recipes

FAMILIES = list(families.BUILDERS)

# The relative output MSE hubquant's int8 config must stay under.
INT8_RELATIVE_MSE = 0.05


# Keras' own quantize() refuses SmolLM3Backbone: its SmolLM3RotaryEmbedding
# layers are never built, and Model.quantize() checks every layer is built.
KERAS_CANNOT = pytest.mark.skip(
    reason="keras Model.quantize() raises on SmolLM3: layer 'rotary_emb' "
    "(SmolLM3RotaryEmbedding) is not built; nothing to compare with"
)


def _marked(mark, names):
    return [pytest.param(f, marks=mark) if f in names else f for f in FAMILIES]


@pytest.fixture(scope="session")
def float_models():
    """Each family's tiny backbone, built once per session (cached in families)."""
    return {name: families.float_state(name) for name in FAMILIES}


@pytest.fixture
def fresh(float_models):
    """A new float copy of a family's backbone, rebuilt from config and weights."""
    return families.fresh_backbone


def outputs(backbone, inputs) -> list[np.ndarray]:
    return [np.asarray(x, np.float32) for x in keras.tree.flatten(backbone(inputs))]


def relative_mse(got, ref) -> float:
    num = sum(float(np.sum((g - r) ** 2)) for g, r in zip(got, ref, strict=True))
    return num / sum(float(np.sum(r**2)) for r in ref)


def assert_bitwise(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert np.array_equal(g, r)


def test_every_builder_has_a_shipped_recipe_and_no_backbone_is_claimed_twice():
    recipes = shipped_recipes()  # load_recipes refuses a backbone served twice
    assert set(FAMILIES) <= set(recipes)


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_resolves_with_the_family_recipe(family, fresh):
    backbone = fresh(family)
    plan = hubquant.plan_for(backbone, "int4")
    assert plan.recipe == family
    assert plan.backbone == type(backbone).__name__
    # int4 config: nothing left "none" but routers, which choose experts
    assert [e for e in plan.entries if e.mode == "none"] == [
        e for e in plan.entries if e.role.endswith("router")
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_role_has_one_entry_per_block(family, fresh):
    backbone = fresh(family)
    plan = hubquant.plan_for(backbone, "int4")
    recipe = shipped_recipes()[family]
    blocks = len(getattr(backbone, recipe.blocks))
    for spec in recipe.roles:
        if spec.scope == "block":
            got = sorted(e.block for e in plan.entries if spec.role in e.role.split("+"))
            per_block = max(1, len(spec.matrices))
            if spec.optional:  # e.g. a dense MLP or an expert bank, not both
                assert set(got) <= set(range(blocks)), spec.role
                assert all(got.count(b) == per_block for b in set(got)), spec.role
            else:
                assert got == sorted(list(range(blocks)) * per_block), spec.role
    matrices = [(id(surgery.layer_at(backbone, e.attr)), e.matrix) for e in plan.entries]
    assert len(set(matrices)) == len(matrices)


@pytest.mark.parametrize("family", FAMILIES)
def test_surgery_is_exact(family, fresh):
    backbone = fresh(family)
    inputs = families.sample_inputs(backbone)
    before = outputs(backbone, inputs)
    plan = hubquant.plan_for(backbone, "int4")
    surgery.swap_layers(backbone, plan)
    assert_bitwise(outputs(backbone, inputs), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_is_close_to_float(family, fresh):
    backbone = fresh(family)
    inputs = families.sample_inputs(backbone)
    ref = outputs(backbone, inputs)
    hubquant.apply_plan(backbone, hubquant.plan_for(backbone, "int8"))
    err = relative_mse(outputs(backbone, inputs), ref)
    assert err < INT8_RELATIVE_MSE, f"relative MSE {err:.4f}"


ENCODERS = ["bert", "roberta", "xlm_roberta", "distil_bert"]


@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_int4_config_fits_every_encoder_family(family, fresh):
    """configs/encoder_int4.yaml (#18): every rule matches (--strict; the pooler
    rule is optional), the token table int4 g64, the pooler int4 g128, every
    projection int8, outputs within 1 % relative MSE of float. Which config is
    closer to float is judged on the real all-MiniLM-L6-v2
    (bench/encoder_fidelity.py), not on these random weights."""
    ref_model = fresh(family)
    inputs = families.sample_inputs(ref_model)
    ref = outputs(ref_model, inputs)
    errors = {}
    for config in ("int8", "encoder_int4"):
        backbone = fresh(family)
        plan = hubquant.plan_for(backbone, config, strict=config == "encoder_int4")
        hubquant.apply_plan(backbone, plan)
        errors[config] = relative_mse(outputs(backbone, inputs), ref)
        if config == "encoder_int4":
            int4 = {"embed": 64, "pooler": 128}
            for e in plan.entries:
                want = ("int4", int4[e.role]) if e.role in int4 else ("int8", -1)
                assert (e.mode, e.group_size) == want, e.path
    assert errors["int8"] <= errors["encoder_int4"] < 0.01, errors


@pytest.mark.parametrize("family", _marked(KERAS_CANNOT, {"smollm3"}))
def test_int4_as_close_as_keras_int4_block_128_within_5_percent(family, fresh, monkeypatch):
    if any(spec.matrices for spec in shipped_recipes()[family].roles):
        pytest.skip("Keras leaves expert banks in float: see tests/test_moe.py")
    ref_model = fresh(family)
    inputs = families.sample_inputs(ref_model)
    ref = outputs(ref_model, inputs)
    ours = fresh(family)
    hubquant.apply_plan(ours, hubquant.plan_for(ours, "int4"))  # configs/int4.yaml
    theirs = fresh(family)
    # Keras runs gc.collect() for every variable it deletes (0.4 s each here);
    # skipping it changes no number, only the time.
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    theirs.quantize("int4", config=Int4QuantizationConfig(block_size=128))
    ours_err = relative_mse(outputs(ours, inputs), ref)
    theirs_err = relative_mse(outputs(theirs, inputs), ref)
    # The shipped int4 rule was chosen by outputs on real pretrained weights, where
    # it is far closer than Keras' int4 (README, Fidelity: SmolLM2 +22.5 % against
    # +43.5 % perplexity, Gemma 3 +47.4 % against +70.2 %). On these tiny random
    # weights it is 0.04-0.84x Keras' error, except GPT-2 at 1.02x (its value and
    # output projections round between their own min and max since the rule
    # searches clipping in the query and key only): hence the 5 % allowance.
    assert ours_err <= 1.05 * theirs_err, f"hubquant/keras MSE ratio {ours_err / theirs_err:.3f}"


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip_bitwise(family, fresh, tmp_path):
    backbone = fresh(family)
    inputs = families.sample_inputs(backbone)
    hubquant.quantize(backbone, "int4")
    quantized = outputs(backbone, inputs)
    hubquant.save(backbone, tmp_path / "x", formats=("preset", "keras"))
    from_folder = hubquant.load(tmp_path / "x")
    from_keras = hubquant.load(tmp_path / "x" / "model.keras")
    assert type(from_folder).__name__ == type(backbone).__name__
    assert_bitwise(outputs(from_folder, inputs), quantized)
    assert_bitwise(outputs(from_keras, inputs), quantized)


@pytest.mark.parametrize("config", ["int8", "int4", "int4_gptq", "mixed"])
def test_shipped_configs_are_quiet_on_every_family(config, fresh):
    """A shipped config warns about no rule on any model a recipe serves (its
    family-specific rules say ``optional: true``), even under --strict."""
    from hubquant import synthetic

    backbones = [fresh(name) for name in FAMILIES]
    backbones += [synthetic.gemma_causal_lm().backbone, synthetic.llama3_causal_lm().backbone]
    for backbone in backbones:
        plan = hubquant.plan_for(backbone, config, strict=True)
        assert plan.unmatched_rules == (), type(backbone).__name__
