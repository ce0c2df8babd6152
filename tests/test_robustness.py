"""Arbitrary config files never crash the reader; a killed run leaves nothing loadable."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import hubquant
from hubquant.config import Config, parse_config
from hubquant.errors import ArtefactError, ConfigError

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-300, 300),
    st.floats(allow_nan=False),
    st.sampled_from(
        ["int4", "int8", "none", "attn.*", "embed", "0:2", "-1", "rtn", "gptq", "[", "*"]
    ),
    st.text(max_size=8),
)
keys = st.sampled_from(
    [
        "default",
        "rules",
        "match",
        "mode",
        "group_size",
        "symmetric",
        "algorithm",
        "role",
        "blocks",
        "path",
        "x",
    ]
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_any_yaml_document_gives_a_config_or_a_config_error(doc):
    try:
        result = parse_config(yaml.safe_dump(doc), "fuzz.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(result, Config)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_any_text_gives_a_config_or_a_config_error(text):
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_killed_while_writing_leaves_nothing_loadable(tmp_path, float_presets, sig):
    target = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "hubquant.cli",
        "apply",
        "--preset",
        str(float_presets["gemma"]),
        "--config",
        "int8",
        "--output",
        str(target),
        "--format",
        "preset,keras,safetensors",
        "--quiet",
    ]
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()):
            os.kill(proc.pid, sig)
            break
        time.sleep(0.005)
    err = proc.communicate()[1]
    assert not target.exists()
    if sig == signal.SIGTERM:  # handled as Ctrl-C: cleaned up, and said so
        assert proc.returncode == 143, "the run finished before it could be stopped"
        assert err.endswith("hubquant: terminated; nothing was written.\n")
        assert not list(tmp_path.glob(".out.*"))
        return
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    for partial in tmp_path.glob(".out.partial-*"):
        with pytest.raises(ArtefactError):
            hubquant.load(partial)
    # The next run of the same output removes what the killed one left.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_layer(fresh, value):
    from hubquant.errors import WeightsError

    lm = fresh("gemma")
    kernel = lm.backbone.get_layer("decoder_block_1").attention.query_dense.kernel
    w = kernel.numpy()
    w[1, 0, 5] = value
    kernel.assign(w)
    with pytest.raises(WeightsError) as caught:
        hubquant.quantize(lm, "int8")
    assert str(caught.value) == (
        f"layer 'decoder_block_1/attention/query': its weights hold a non-finite value "
        f"(row 29, column 0 holds {value}); hubquant does not quantize NaN or Inf. "
        "Fix the checkpoint (or zero those weights) first."
    )


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_weights_near_the_float32_limit_get_finite_scales(mode):
    import numpy as np

    from hubquant import quantizers

    w = np.random.default_rng(0).uniform(-3e38, 3e38, (8, 256)).astype(np.float32)
    m = quantizers.quantize(w, mode, 128, False)
    assert np.isfinite(m.scale).all()
    back = quantizers.dequantize(m, 256, None if mode == "int8" else 128)
    assert np.isfinite(back).all() and np.abs(back - w).max() < 0.25 * np.abs(w).max()
