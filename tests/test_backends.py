"""The core round trip under every Keras backend, and artefacts moving between them."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from backend_roundtrip import INPUTS

import hubquant

SCRIPT = Path(__file__).with_name("backend_roundtrip.py")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_round_trip_under_backend_and_load_under_jax(backend, tmp_path):
    out = tmp_path / backend
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ok {backend}" in result.stdout
    written = np.load(f"{out}.npy")
    for path in (out, out / "model.keras", out / "model.safetensors"):
        here = np.asarray(hubquant.load(path)(INPUTS))  # this process runs JAX
        np.testing.assert_allclose(here, written, atol=1e-4, rtol=1e-4)
