"""Saved artefacts load back bitwise equal, through every load path."""

import json

import keras
import keras_hub
import numpy as np
import pytest
from conftest import logits

import hubquant
from hubquant import api, synthetic

FAMILIES = ["gemma", "llama3"]


@pytest.fixture(scope="session")
def saved(float_presets, inputs, tmp_path_factory):
    """Each family quantized with mixed.yaml, saved once as preset + .keras."""
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for family in FAMILIES:
        lm = keras_hub.models.CausalLM.from_preset(str(float_presets[family]))
        plan = hubquant.quantize(lm, "mixed")
        api.save(lm, root / family, formats=("preset", "keras"))
        out[family] = (root / family, logits(lm, inputs), plan)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "loader",
    [
        lambda d: hubquant.load(d),
        lambda d: hubquant.load(d / "model.keras"),
        lambda d: keras.saving.load_model(d / "model.keras"),
        lambda d: keras_hub.models.CausalLM.from_preset(str(d)),
    ],
    ids=["hubquant.load(dir)", "hubquant.load(.keras)", "keras.load_model", "CausalLM.from_preset"],
)
def test_round_trip_is_bitwise(family, loader, saved, inputs):
    folder, before, plan = saved[family]
    model = loader(folder)
    assert type(model).__name__ == type(model)._hubquant_base.__name__
    assert np.array_equal(logits(model, inputs), before)
    assert model.backbone.hubquant_plan == plan


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_from_preset_loads_quantized(family, saved, inputs):
    folder, _, plan = saved[family]
    backbone = keras_hub.models.Backbone.from_preset(str(folder))
    assert backbone.hubquant_plan == plan
    lm = hubquant.load(folder)
    np.testing.assert_array_equal(np.asarray(backbone(inputs)), np.asarray(lm.backbone(inputs)))


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_after_load(family, saved):
    lm = hubquant.load(saved[family][0])
    text = lm.generate("the sea", max_length=12)
    assert isinstance(text, str) and text.startswith("the sea")


def test_keras_archive_loads_without_a_compile_warning(saved):
    """Keras warns on every KerasHub task archive that its custom compile() was
    not restored; the task compiles itself, so hubquant.load says nothing."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm = hubquant.load(saved["gemma"][0] / "model.keras")
    assert lm.compiled and lm.generate("the sea", max_length=12).startswith("the sea")


def test_metadata_records_plan_recipe_and_config(saved):
    meta = json.loads((saved["gemma"][0] / "hubquant.json").read_text())
    assert meta["hubquant_version"] == hubquant.__version__
    assert meta["recipe"]["name"] == "gemma" and "GemmaBackbone" in meta["recipe"]["text"]
    assert "int4" in meta["config"]["text"]
    assert hubquant.Plan.from_dict(meta["plan"]) == saved["gemma"][2]


def test_llama3_tokenizer_without_default_special_tokens_reloads(tmp_path, inputs):
    tokenizer = synthetic.llama3_tokenizer()
    vocab = (
        {t: i for t, i in tokenizer.get_vocabulary_dict().items() if "header" not in t}
        if hasattr(tokenizer, "get_vocabulary_dict")
        else None
    )
    vocab = vocab or {t: i for i, t in enumerate(tokenizer.get_vocabulary()) if "header" not in t}
    vocab = {t: i for i, t in enumerate(vocab)}
    bare = keras_hub.models.Llama3Tokenizer(
        vocabulary=vocab, merges=synthetic.LLAMA3_MERGES, misc_special_tokens=set()
    )
    lm = synthetic.llama3_causal_lm(seed=3, tokenizer=bare)
    hubquant.quantize(lm, "int8")
    api.save(lm, tmp_path / "out")
    again = hubquant.load(tmp_path / "out")
    assert again.preprocessor.tokenizer.vocabulary_size() == bare.vocabulary_size()
    assert np.array_equal(logits(again, inputs), logits(lm, inputs))


def test_bfloat16_round_trip(float_presets, inputs, tmp_path):
    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["llama3"]), dtype="bfloat16")
    hubquant.quantize(lm, "int4")
    api.save(lm, tmp_path / "bf16", formats=("preset", "keras"))
    for model in (
        hubquant.load(tmp_path / "bf16"),
        hubquant.load(tmp_path / "bf16" / "model.keras"),
    ):
        out = model(inputs)
        assert out.dtype == "bfloat16"
        assert np.array_equal(np.asarray(out), np.asarray(lm(inputs)))


def test_backbone_without_task_round_trips(float_presets, inputs, tmp_path):
    backbone = keras_hub.models.Backbone.from_preset(str(float_presets["gemma"]))
    hubquant.quantize(backbone, "int4")
    before = np.asarray(backbone(inputs))
    api.save(backbone, tmp_path / "bb")
    assert not (tmp_path / "bb" / "task.json").exists()
    again = hubquant.load(tmp_path / "bb")
    assert isinstance(again, keras_hub.models.GemmaBackbone)
    assert np.array_equal(np.asarray(again(inputs)), before)


def test_source_preset_keeps_its_saved_dtype(float_presets, tmp_path):
    from hubquant.float_preset import load_source, saved_dtype

    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["llama3"]), dtype="bfloat16")
    lm.save_to_preset(str(tmp_path / "bf16"))
    assert saved_dtype(str(tmp_path / "bf16")) == "bfloat16"
    assert load_source(str(tmp_path / "bf16")).backbone.dtype_policy.name == "bfloat16"
