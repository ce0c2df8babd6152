"""The core round trip under every Keras backend, and artefacts moving between them.

Each backend runs in one fresh process (tests/backend_roundtrip.py) that
quantizes, saves and reloads under that backend, and also loads what this
process (JAX) wrote; this process then loads what that backend wrote.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest
from backend_roundtrip import INPUTS, artefacts

import hubquant

SCRIPT = Path(__file__).with_name("backend_roundtrip.py")


@pytest.fixture(scope="module")
def written_under_jax(float_presets, tmp_path_factory):
    """An int4 Gemma saved in every format by this (JAX) process, and its logits."""
    assert keras.config.backend() == "jax"
    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["gemma"]))
    hubquant.quantize(lm, "int4")
    folder = tmp_path_factory.mktemp("jax") / "q"
    hubquant.save(lm, folder, formats=("preset", "keras", "safetensors"))
    return folder, np.asarray(lm(INPUTS))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_round_trip_under_backend_and_artefacts_load_both_ways(
    backend, tmp_path, written_under_jax
):
    jax_dir, jax_logits = written_under_jax
    out = tmp_path / backend
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(jax_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ok {backend}" in result.stdout
    # Written under `backend`, loaded here under JAX.
    written = np.load(f"{out}.npy")
    for path in artefacts(out):
        here = np.asarray(hubquant.load(path)(INPUTS))
        np.testing.assert_allclose(here, written, atol=1e-4, rtol=1e-4, err_msg=path)
    # Written here under JAX, loaded under `backend`.
    for path, there in zip(artefacts(jax_dir), np.load(f"{out}.from_jax.npy"), strict=True):
        np.testing.assert_allclose(there, jax_logits, atol=1e-4, rtol=1e-4, err_msg=path)
