"""GPTQ on one matrix: agrees with a plain NumPy reference, beats round-to-nearest."""

from __future__ import annotations

import numpy as np
import pytest
from gptq_reference import gptq_reference

from hubquant import quantizers
from hubquant.calibrate.gptq import gptq_quantize

N, K = 64, 200  # K = 200: a partial last group for every group size below


def _activations(rng, rows, mix):
    """Correlated inputs with a few outlier channels, like a transformer's."""
    x = (rng.standard_normal((rows, len(mix))) @ mix).astype(np.float32)
    x[:, :4] *= 20.0
    return x


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    mix = 0.5 * np.eye(K) + rng.standard_normal((K, K)) / np.sqrt(K)
    x = _activations(rng, 1024, mix)
    x[:, 9] = 0.0  # a dead input channel
    w = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)
    held_out = _activations(rng, 512, mix)
    held_out[:, 9] = 0.0
    return w, (2 * x.T @ x / len(x)).astype(np.float32), held_out


@pytest.mark.parametrize(
    ("group_size", "symmetric", "block_size"),
    [(64, False, 128), (40, True, 120), (-1, True, 128)],
)
def test_matches_numpy_reference(layer, group_size, symmetric, block_size):
    w, h, _ = layer
    got = gptq_quantize(
        w, h, "int4", group_size, symmetric, act_order=False, block_size=block_size, search=False
    )
    codes, scale, zero = gptq_reference(w, h, group_size, symmetric, block_size=block_size)
    np.testing.assert_array_equal(quantizers.unpack_int4(got.codes, K), codes)
    # Codes exactly; scales to float32 rounding (a few ulps: LAPACK builds differ in
    # the last bits of the inverse Hessian factor, e.g. 1.2e-6 with SciPy 1.17).
    np.testing.assert_allclose(got.scale, scale, rtol=1e-5)
    if symmetric:
        assert got.zero is None
    else:
        np.testing.assert_array_equal(got.zero, zero)


def _output_error(w, matrix, x, group_size=None):
    deq = quantizers.dequantize(matrix, w.shape[1], group_size)
    return float(np.mean((x @ (deq - w).T) ** 2))


@pytest.mark.parametrize(
    ("group_size", "symmetric", "act_order"), [(64, False, False), (-1, True, True)]
)
def test_lower_output_error_than_rtn_on_held_out_inputs(layer, group_size, symmetric, act_order):
    w, h, x = layer
    got = gptq_quantize(w, h, "int4", group_size, symmetric, act_order=act_order)
    rtn = quantizers.quantize_int4(w, group_size, symmetric)
    assert _output_error(w, got, x, group_size) < 0.6 * _output_error(w, rtn, x, group_size)


def test_int8_per_channel(layer):
    w, h, x = layer
    got = gptq_quantize(w, h, "int8")
    assert got.codes.dtype == np.int8 and got.codes.shape == (N, K) and got.scale.shape == (N,)
    assert _output_error(w, got, x) < 0.6 * _output_error(w, quantizers.quantize_int8(w), x)


def test_act_order_keeps_the_natural_group_layout(layer):
    """Static groups: scales are the min/max of each natural group of ``w``."""
    w, h, _ = layer
    got = gptq_quantize(w, h, "int4", 64, True, act_order=True, search=False)
    padded = np.zeros((N, 256), np.float32)
    padded[:, :K] = w
    padded[:, 9] = 0.0
    expected = np.abs(padded.reshape(N, 4, 64)).max(-1) / 7
    np.testing.assert_allclose(got.scale, expected, rtol=1e-6)


def test_deterministic(layer):
    w, h, _ = layer
    a = gptq_quantize(w, h, "int4", 64, False)
    b = gptq_quantize(w, h, "int4", 64, False)
    for x, y in zip((a.codes, a.scale, a.zero), (b.codes, b.scale, b.zero), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(("mode", "group_size"), [("int8", -1), ("int4", 64)])
def test_on_grid_keeps_the_grid_and_lowers_the_output_error(layer, mode, group_size):
    """A merge's target (the codes' matrix plus a delta of about a step) on the
    kept grid: GPTQ's sweep moves codes only, and its output error on held-out
    inputs is below rounding each weight to its nearest level."""
    from hubquant.calibrate.gptq import gptq_on_grid

    w, h, held_out = layer
    kept = quantizers.quantize(w, mode, group_size=group_size)
    gs = None if mode == "int8" else group_size
    step = np.mean(kept.scale)
    target = quantizers.dequantize(kept, K, gs) + np.random.default_rng(1).normal(
        0, step, w.shape
    ).astype(np.float32)
    nearest = quantizers.requantize_on_grid(target, mode, group_size, kept)
    swept = gptq_on_grid(target, h, nearest, mode, group_size)
    assert np.array_equal(swept.scale, nearest.scale)
    errors = [
        np.mean((held_out @ (quantizers.dequantize(m, K, gs) - target).T) ** 2)
        for m in (nearest, swept)
    ]
    assert errors[1] < 0.8 * errors[0], errors
