"""hubquant's own safetensors: stored as held, rebuildable from the files alone."""

import json

import keras_hub
import numpy as np
import pytest
from conftest import logits
from safetensors import safe_open

import hubquant
from hubquant.io.safetensors_format import load_safetensors, save_safetensors


@pytest.fixture(scope="module")
def quantized(float_presets, inputs):
    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["llama3"]))
    plan = hubquant.quantize(lm, "mixed")
    return lm, plan, logits(lm, inputs)


@pytest.fixture(scope="module")
def saved(quantized, tmp_path_factory):
    folder = tmp_path_factory.mktemp("st") / "out"
    hubquant.save(quantized[0], folder, formats=("safetensors",))
    return folder


def test_round_trip_from_folder_and_file(saved, quantized, inputs):
    for path in (saved, saved / "model.safetensors"):
        model = hubquant.load(path)
        assert np.array_equal(logits(model, inputs), quantized[2])
        assert model.backbone.hubquant_plan == quantized[1]
    assert model.generate("the sea", max_length=10).startswith("the sea")


def test_tensors_are_stored_as_held_with_metadata(saved, quantized):
    lm, plan, _ = quantized
    with safe_open(str(saved / "model.safetensors"), framework="numpy") as f:
        meta = f.metadata()
        names = set(f.keys())
        for var in lm.backbone.weights:
            value = f.get_tensor(var.path)
            assert value.dtype == np.dtype(var.dtype) and value.shape == tuple(var.shape)
    assert meta["format"] == "hubquant" and meta["format_version"] == "1"
    assert meta["hubquant_version"] == hubquant.__version__
    assert hubquant.Plan.from_dict(json.loads(meta["plan"])) == plan
    assert json.loads(meta["recipe"])["name"] == "llama3"
    assert "int4" in json.loads(meta["config"])["text"]
    entry = plan.quantized[0]
    assert f"{entry.path}/{entry.matrix}_codes" in names
    assert any(n.startswith("__preset__/assets/tokenizer/") for n in names)


def test_sharded_files_load_shard_by_shard(quantized, inputs, tmp_path):
    save_safetensors(quantized[0], tmp_path, max_shard_bytes=30_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3 and all((tmp_path / s).is_file() for s in shards)
    assert np.array_equal(logits(load_safetensors(tmp_path), inputs), quantized[2])
