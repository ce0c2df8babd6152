"""Quantizing and loading under ``keras.distribution``: on 4 host devices
(conftest), every quantized matrix is sharded like the float kernel it
replaces (each device holds a quarter of its codes), the logits equal the
single-device ones, ``generate()`` works, and what is saved is byte for byte
what a single device saves."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from pathlib import Path

import jax
import keras
import keras_hub
import numpy as np
import pytest
from conftest import logits

import hubquant
from hubquant import synthetic
from hubquant.config import load_config, parse_config

GPTQ_CONFIG = (
    "default: {mode: int4, group_size: 32, algorithm: gptq}\n"
    "rules:\n  - {match: {role: 'embed*'}, mode: int8, algorithm: rtn}\n"
)
BUILDERS = {  # heads, vocabulary and widths the family's layout map can split 4 ways
    "gemma": lambda: synthetic.gemma_causal_lm(
        seed=0, num_key_value_heads=4, hidden_dim=64, head_dim=16, intermediate_dim=256
    ),
    "llama3": lambda: synthetic.llama3_causal_lm(
        seed=0, vocabulary_size=272, num_key_value_heads=4, hidden_dim=64, intermediate_dim=128
    ),
}
BACKBONES = {"gemma": keras_hub.models.GemmaBackbone, "llama3": keras_hub.models.Llama3Backbone}


@pytest.fixture(autouse=True)
def float_products(monkeypatch):
    """One device's reference takes the float many-row products, as the sharded
    XLA path does: AMX tiles keep about 15 bits of their inputs, which moves
    logits by more than float rounding (``tests/test_native.py`` bounds that)."""
    monkeypatch.setenv("HUBQUANT_AMX", "0")


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("shardable")
    for name, build in BUILDERS.items():
        build().save_to_preset(str(root / name))
    return root


def _distribution(family: str, mesh_shape: tuple):
    mesh = keras.distribution.DeviceMesh(
        mesh_shape, ("batch", "model"), keras.distribution.list_devices()
    )
    layout_map = BACKBONES[family].get_layout_map(mesh)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def _inputs():
    ids = np.random.default_rng(5).integers(4, 100, (4, 12)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _quantized_matrices(model) -> list:
    return [w for w in model.weights if w.path.rsplit("/", 1)[-1].endswith("_codes")]


def _float_path(codes_path: str) -> str:
    layer, name = codes_path.rsplit("/", 1)
    name = name.removesuffix("_codes")
    return f"{layer}/{'reverse_embeddings' if name == 'reverse' else name}"


def _held_per_device(variable) -> float:
    """The fraction of ``variable`` one device holds."""
    shard = variable.value.sharding.shard_shape(variable.shape)
    return float(np.prod(shard) / np.prod(variable.shape))


def _digests(folder) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("family", "mesh_shape"), [("gemma", (1, 4)), ("llama3", (2, 2))])
def test_quantize_under_a_distribution_shards_every_matrix(presets, family, mesh_shape, tmp_path):
    keras.backend.clear_session()  # Keras saves layer names, numbered per process
    single = keras_hub.models.CausalLM.from_preset(str(presets / family))
    hubquant.quantize(single, "int4")
    want = logits(single, _inputs())
    hubquant.save(single, tmp_path / "single", formats=("preset", "safetensors"))
    keras.backend.clear_session()
    with _distribution(family, mesh_shape).scope():
        lm = keras_hub.models.CausalLM.from_preset(str(presets / family))
        floats = {w.path: _held_per_device(w) for w in lm.weights}
        hubquant.quantize(lm, "int4")
        held = {w.path: _held_per_device(w) for w in _quantized_matrices(lm)}
        got = logits(lm, _inputs())
    # A quarter of every matrix the layout map splits; Llama's untied LM head,
    # which its map leaves out, stays replicated as the float one was.
    assert held == {p: floats[_float_path(p)] for p in held}
    assert sum(h == 0.25 for h in held.values()) >= len(held) - 1
    np.testing.assert_allclose(got, want, atol=1e-5)
    hubquant.save(lm, tmp_path / "sharded", formats=("preset", "safetensors"))
    assert _digests(tmp_path / "sharded") == _digests(tmp_path / "single")


def test_load_and_generate_under_a_distribution(presets, tmp_path):
    single = keras_hub.models.CausalLM.from_preset(str(presets / "gemma"))
    hubquant.quantize(single, "int8")
    hubquant.save(single, tmp_path / "q")
    want = logits(single, _inputs())
    with _distribution("gemma", (2, 2)).scope():
        lm = hubquant.load(tmp_path / "q")
        held = [_held_per_device(w) for w in _quantized_matrices(lm)]
        got = logits(lm, _inputs())
        texts = lm.generate(["the", "a"], max_length=6)  # a batch the mesh can split
    assert held and all(h == 0.25 for h in held)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len(texts) == 2 and texts[0].startswith("the") and texts[1].startswith("a")


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_calibration_under_a_distribution_equals_one_device(presets, algorithm):
    """Calibration windows split along the mesh's batch axis; X^T X and AWQ's
    statistics are sums over all of them, so the result is one device's within
    float tolerance: logits within 1e-5; GPTQ's codes here bitwise (a code at a
    rounding tie may flip when sums add in another order, see the MoE test)."""
    config = parse_config(
        f"default: {{mode: int4, group_size: 32, algorithm: {algorithm}}}\n"
        "rules:\n  - {match: {role: 'embed*'}, mode: int8, algorithm: rtn}\n",
        "c.yaml",
    )
    tokens = np.random.default_rng(3).integers(4, 100, (8, 32)).astype("int32")
    single = keras_hub.models.CausalLM.from_preset(str(presets / "gemma"))
    hubquant.apply_plan(single, hubquant.plan_for(single, config), calibration=tokens)
    with _distribution("gemma", (2, 2)).scope():
        lm = keras_hub.models.CausalLM.from_preset(str(presets / "gemma"))
        hubquant.apply_plan(lm, hubquant.plan_for(lm, config), calibration=tokens)
        held = [_held_per_device(w) for w in _quantized_matrices(lm)]
        got = logits(lm, _inputs())
    assert held and all(h == 0.25 for h in held)
    np.testing.assert_allclose(got, logits(single, _inputs()), atol=1e-5)
    if algorithm == "gptq":
        assert all(np.array_equal(a, b) for a, b in zip(single.weights, lm.weights, strict=True))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_forward_pass_gathers_no_matrix(presets, mode):
    """Compiled under the distribution, a forward pass (prefill and one-token
    decode) holds no all-gather: each device multiplies the rows it holds."""
    with _distribution("gemma", (1, 4)).scope():
        lm = keras_hub.models.CausalLM.from_preset(str(presets / "gemma"))
        hubquant.quantize(lm, mode)
        backbone = lm.backbone
        weights = (
            [v.value for v in backbone.trainable_variables],
            [v.value for v in backbone.non_trainable_variables],
        )
        forward = jax.jit(lambda t, n, x: backbone.stateless_call(t, n, x)[0])
        for length in (12, 1):
            ids = np.ones((4, length), "int32")
            x = {"token_ids": ids, "padding_mask": ids}
            compiled = forward.lower(*weights, x).compile().as_text()
            assert "all-gather" not in compiled, (mode, length)


def test_expert_banks_split_by_whole_experts(mesh_shape=(1, 4)):
    """Qwen3-MoE with its family's map plus one line for the expert banks
    (``[experts, in, out]`` split along the experts), calibrated by GPTQ expert
    by expert: each quantized bank is split as its float bank was. Model
    parallel sums add in another order, so a code at a rounding tie can flip
    (on (1, 4): 0.1-0.5 % of the codes from the second block on); the outputs
    stay within a tenth of quantization's own change. One mesh: the model
    axis 4 ways is the split that must keep experts whole."""
    from families import qwen3_moe_backbone, sample_inputs

    config = parse_config(GPTQ_CONFIG, "gptq.yaml")
    tokens = np.random.default_rng(3).integers(4, 100, (8, 32)).astype("int32")
    dims = {"num_key_value_heads": 4}  # a head count the map can split 4 ways
    single = qwen3_moe_backbone(**dims)
    x = sample_inputs(single, batch=4)
    float_out = np.asarray(single(x))
    hubquant.apply_plan(single, hubquant.plan_for(single, config), calibration=tokens)
    want = np.asarray(single(x))
    mesh = keras.distribution.DeviceMesh(
        mesh_shape, ("batch", "model"), keras.distribution.list_devices()
    )
    layout_map = keras_hub.models.Qwen3MoeBackbone.get_layout_map(mesh)
    layout_map["transformer_layer.*experts/expert_.*"] = ("model", None, None)
    distribution = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    with distribution.scope():
        backbone = qwen3_moe_backbone(**dims)
        floats = {w.path: _held_per_device(w) for w in backbone.weights}
        hubquant.apply_plan(backbone, hubquant.plan_for(backbone, config), calibration=tokens)
        banks = {
            w.path: _held_per_device(w)
            for w in _quantized_matrices(backbone)
            if "/experts/" in w.path
        }
        got = np.asarray(backbone(x))
    share = 1 / mesh_shape[1]  # whole experts over the model axis
    assert banks and all(h == share for h in banks.values()), banks
    assert all(floats[_float_path(p).replace("/_expert", "/expert")] == share for p in banks)
    assert np.linalg.norm(got - want) <= 0.1 * np.linalg.norm(want - float_out)
    codes = [
        (np.asarray(a), np.asarray(b))
        for a, b in zip(single.weights, backbone.weights, strict=True)
    ]
    codes = [(a, b) for a, b in codes if a.dtype == np.int8]
    assert np.mean(np.concatenate([(a == b).ravel() for a, b in codes])) > 0.99


def test_two_processes_write_what_one_process_writes(presets, tmp_path):
    """Two CPU processes (jax.distributed on localhost, 2 devices each) calibrate
    and quantize one model sharded across both (GPTQ); the artefact is written
    once and is byte for byte what a single process writes."""
    config, tokens = tmp_path / "gptq.yaml", tmp_path / "tokens.npy"
    config.write_text(GPTQ_CONFIG)
    np.save(tokens, np.random.default_rng(3).integers(4, 100, (8, 32)).astype("int32"))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    script = Path(__file__).with_name("multiprocess_quantize.py")
    args = [str(presets / "gemma"), str(config), str(tokens), str(tmp_path / "sharded")]
    runs = [
        subprocess.Popen([sys.executable, str(script), str(i), port, *args], stderr=subprocess.PIPE)
        for i in (0, 1)
    ]
    errors = [run.communicate(timeout=600)[1].decode()[-2000:] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    single = keras_hub.models.CausalLM.from_preset(str(presets / "gemma"))
    plan = hubquant.plan_for(single, load_config(config))
    hubquant.apply_plan(single, plan, calibration=np.load(tokens))
    hubquant.save(single, tmp_path / "single", formats=("preset", "safetensors"))
    assert _digests(tmp_path / "sharded") == _digests(tmp_path / "single")
