"""A quantized artefact's saved config rebuilds the same architecture.

KerasHub backbones save only what their ``get_config`` writes, and some leave
constructor arguments out (KerasHub 0.32's ``LlamaBackbone`` drops
``tie_word_embeddings``, so a tied Llama reloaded untied and could not load its
own weights). hubquant's registered subclasses write every argument back.
"""

import json

import families
import keras
import keras_hub
import numpy as np
import pytest

import hubquant
from hubquant import synthetic
from hubquant.recipe import shipped_recipes
from hubquant.registered import constructor_arguments, hubquant_class

# Constructor arguments that change neither the weights nor the structure of the
# inference graph, and that KerasHub keeps nowhere hubquant could read them back.
NOT_SAVED = {
    # Only adds an auxiliary loss during training (MixtralTransformerDecoder.call).
    ("MixtralBackbone", "output_router_logits"),
}

BUILDERS = {
    **families.BUILDERS,
    "gemma": lambda seed=0: synthetic.gemma_causal_lm(seed).backbone,
    "llama3": lambda seed=0: synthetic.llama3_causal_lm(seed).backbone,
}


def _served() -> dict[str, str]:
    """Backbone class name -> the recipe that serves it."""
    return {cls: r.name for r in shipped_recipes().values() for cls in r.backbones}


def test_every_served_backbone_class_has_a_builder():
    assert set(_served().values()) <= set(BUILDERS)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_saved_config_holds_every_constructor_argument(family):
    if family in families.BUILDERS:
        backbone = families.fresh_backbone(family)  # built once per session
    else:
        backbone = BUILDERS[family]()
    plan = hubquant.plan_for(backbone, "int8")
    quantized_cls = hubquant_class(type(backbone))
    backbone.__class__ = quantized_cls
    object.__setattr__(backbone, "hubquant_plan", plan)
    saved = backbone.get_config()
    base = quantized_cls._hubquant_base
    missing = [
        name
        for name in constructor_arguments(base)
        if name not in saved and (base.__name__, name) not in NOT_SAVED
    ]
    assert missing == []


@pytest.fixture(scope="module")
def tied_llama_hf(tmp_path_factory):
    """A tied Llama 3 as a Hugging Face folder (SmolLM2, Llama 3.2 1B and 3B)."""
    folder = tmp_path_factory.mktemp("tied") / "hf"
    lm = synthetic.llama3_causal_lm(seed=3, tie_word_embeddings=True)
    lm.export_to_transformers(str(folder))
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"]
    return folder


@pytest.mark.parametrize("config", ["int8", "int4"])
def test_tied_llama_artefact_reloads_through_every_path(tied_llama_hf, config, tmp_path, inputs):
    from hubquant import stream

    model, _ = stream.stream_quantize(str(tied_llama_hf), config)
    assert model.backbone.tie_word_embeddings
    before = np.asarray(model(inputs))
    hubquant.save(model, tmp_path / "out", formats=("preset", "keras", "safetensors"))
    for saved in ("config.json", "task.json"):
        assert '"tie_word_embeddings": true' in (tmp_path / "out" / saved).read_text()
    loaders = {
        "hubquant.load": lambda: hubquant.load(tmp_path / "out"),
        "safetensors": lambda: hubquant.load(tmp_path / "out" / "model.safetensors"),
        "keras.load_model": lambda: keras.saving.load_model(tmp_path / "out" / "model.keras"),
        "CausalLM.from_preset": lambda: keras_hub.models.CausalLM.from_preset(
            str(tmp_path / "out")
        ),
    }
    for name, load in loaders.items():
        loaded = load()
        assert loaded.backbone.tie_word_embeddings, name
        assert np.array_equal(np.asarray(loaded(inputs)), before), name
