"""Tiny presets built once per session with fixed seeds; nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "device_count" not in os.environ.get("XLA_FLAGS", ""):  # 4 CPU devices: test_sharding.py
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    os.environ["XLA_FLAGS"] = flags.strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import hubquant  # noqa: E402,F401
from hubquant import synthetic  # noqa: E402

FAMILIES = {
    "gemma": synthetic.gemma_causal_lm,
    "llama3": synthetic.llama3_causal_lm,
}


@pytest.fixture(scope="session", autouse=True)
def native_cache(tmp_path_factory):
    """The compiled decode products are built once per session, into a
    folder of its own (subprocesses inherit it), not the user's cache."""
    if "HUBQUANT_CACHE" not in os.environ:
        os.environ["HUBQUANT_CACHE"] = str(tmp_path_factory.mktemp("hubquant_cache"))
    return os.environ["HUBQUANT_CACHE"]


@pytest.fixture(scope="session")
def float_presets(tmp_path_factory):
    """Each tiny family saved once as a float KerasHub preset folder."""
    root = tmp_path_factory.mktemp("float_presets")
    paths = {}
    for name, build in FAMILIES.items():
        paths[name] = root / name
        build(seed=0).save_to_preset(str(paths[name]))
    return paths


@pytest.fixture(scope="session")
def inputs():
    rng = np.random.default_rng(7)
    return {
        "token_ids": rng.integers(4, 100, (2, 12)).astype("int32"),
        "padding_mask": np.ones((2, 12), "int32"),
    }


@pytest.fixture
def fresh(float_presets):
    """A function giving a new float task model of a family, from its preset."""
    import keras_hub

    def make(family: str):
        return keras_hub.models.CausalLM.from_preset(str(float_presets[family]))

    return make


def logits(model, inputs) -> np.ndarray:
    return np.asarray(model(inputs))


def keras_quantize(model, *args, **kwargs):
    """Keras' own ``model.quantize``, without the ``gc.collect()`` it runs for
    every variable it deletes (about 0.4 s each here; no number changes)."""
    import gc

    collect = gc.collect
    gc.collect = lambda *a: 0
    try:
        model.quantize(*args, **kwargs)
    finally:
        gc.collect = collect


def kl(p_logits, q_logits) -> float:
    """Mean KL(p || q) over positions, from logits."""
    import keras

    p = keras.ops.convert_to_numpy(keras.ops.log_softmax(p_logits, axis=-1))
    q = keras.ops.convert_to_numpy(keras.ops.log_softmax(q_logits, axis=-1))
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))


def with_adapters_added(float_lm, adapted_lm, scales=None):
    """``float_lm`` with each of ``adapted_lm``'s adapters added to its float
    kernel; ``scales(attr)``: ``(rows, columns)`` where AWQ folded scales, the
    adapter then added as ``rows * delta / columns`` (``merge_float.awq_scales``)."""
    from hubquant.paths import layer_at

    backbone = adapted_lm.backbone
    for attr in backbone.hubquant_plan.layers():
        layer = layer_at(backbone, attr)
        if getattr(layer, "lora_enabled", False):
            delta = layer.adapter_matrix()
            if scales is not None:
                rows, columns = scales(attr)
                delta = delta * rows[:, None] / columns[None, :]
            target = layer_at(float_lm.backbone, attr)
            target._kernel.assign(target._kernel + layer.layout.from_matrix(delta))
    return float_lm
