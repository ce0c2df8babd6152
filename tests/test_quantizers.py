"""hubquant's quantizers against a plain NumPy statement of the same math."""

import numpy as np
import pytest
from reference import int4 as ref_int4
from reference import int8 as ref_int8

from hubquant import quantizers as Q


def trained_like(n, k, seed=0, skew=0.0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)
    w *= np.exp(rng.uniform(-1.15, 1.15, (n, 1))).astype(np.float32)
    w[:, rng.choice(k, max(1, k // 32), replace=False)] *= 6
    return (w + skew * np.abs(w)).astype(np.float32)


def agreement(a, b):
    return float(np.mean(a == b))


def test_int8_matches_numpy_reference():
    w = trained_like(64, 200)
    m = Q.quantize_int8(w)
    codes, scale = ref_int8(w)
    assert agreement(m.codes, codes) >= 0.999
    np.testing.assert_allclose(m.scale, scale, rtol=1e-5)


def group_errors(w, codes, scale, zero, group_size):
    n, k = w.shape
    m = Q.QuantizedMatrix(Q.pack_int4(codes), scale, zero)
    d = Q.dequantize(m, k, group_size)
    gs = k if group_size == -1 else group_size
    pad = scale.shape[1] * gs - k
    sq = np.pad((d - w) ** 2, [(0, 0), (0, pad)])
    return sq.reshape(n, scale.shape[1], gs).sum(-1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_int4_matches_numpy_reference(group_size, symmetric):
    """Same codes almost everywhere; where float rounding breaks a near-tie
    between two clipping candidates, the group's error is equal to 1e-4."""
    w = trained_like(48, 200, seed=1)  # 200 is not a multiple of 32 or 128
    m = Q.quantize_int4(w, group_size, symmetric)
    codes, scale, zero = ref_int4(w, group_size, symmetric)
    ours = Q.unpack_int4(m.codes, 200)
    assert agreement(ours, codes) >= 0.99
    assert agreement(np.isclose(m.scale, scale, rtol=1e-4), True) >= 0.95
    assert (m.zero is None) == symmetric
    err_ours = group_errors(w, ours, m.scale, m.zero, group_size)
    err_ref = group_errors(w, codes, scale, zero, group_size)
    np.testing.assert_allclose(err_ours, err_ref, rtol=1e-4)


def test_partial_last_group_is_quantized_not_padded_away():
    w = trained_like(8, 100, seed=2)
    m = Q.quantize_int4(w, 32, False)
    assert m.scale.shape == (8, 4) and m.codes.shape == (8, 50)
    err = np.abs(Q.dequantize(m, 100, 32) - w)[:, 96:]
    assert err.max() < np.abs(w[:, 96:]).max() / 7


def test_pack_roundtrip_and_keras_nibble_order():
    import keras

    codes = np.random.default_rng(3).integers(-8, 8, (5, 9)).astype(np.int8)
    packed = Q.pack_int4(codes)
    assert packed.shape == (5, 5)
    np.testing.assert_array_equal(Q.unpack_int4(packed, 9), codes)
    np.testing.assert_array_equal(
        np.asarray(keras.quantizers.unpack_int4(packed, 9, axis=-1)), codes
    )


def test_clipping_search_never_worse_than_min_max_by_its_weighted_error():
    """Min/max is one of the candidates, so the chosen one never has a higher
    error weighted by ``|w| + mean |w|`` (the rule's own measure), in any group."""
    w = trained_like(64, 256, seed=4)
    g = w.reshape(64, 2, 128)
    lo, hi = np.minimum(g.min(-1), 0), np.maximum(g.max(-1), 0)
    s = (hi - lo) / 15
    z = np.round(-lo / s)
    minmax = (np.clip(np.round(g / s[..., None]) + z[..., None], 0, 15) - z[..., None]) * s[
        ..., None
    ]
    ours = Q.dequantize(Q.quantize_int4(w, 128, False), 256, 128).reshape(64, 2, 128)
    weights = np.abs(g) + np.abs(g).mean(-1, keepdims=True)
    err_ours = (weights * (ours - g) ** 2).sum(-1)
    err_minmax = (weights * (minmax - g) ** 2).sum(-1)
    assert np.all(err_ours <= err_minmax * (1 + 1e-5))
    assert err_ours.sum() < 0.99 * err_minmax.sum()


def test_asymmetric_beats_symmetric_on_skewed_weights():
    w = trained_like(32, 256, seed=5, skew=1.5)
    errs = {
        sym: ((Q.dequantize(Q.quantize_int4(w, 64, sym), 256, 64) - w) ** 2).mean()
        for sym in (True, False)
    }
    assert errs[False] < 0.8 * errs[True]


def test_int4_sqnr_bound():
    w = trained_like(128, 512, seed=6)
    d = Q.dequantize(Q.quantize_int4(w, 128, False), 512, 128)
    sqnr = 10 * np.log10((w**2).sum() / ((w - d) ** 2).sum())
    assert sqnr >= 15.0
    d8 = Q.dequantize(Q.quantize_int8(w), 512)
    assert 10 * np.log10((w**2).sum() / ((w - d8) ** 2).sum()) >= 30.0


@pytest.mark.parametrize(
    "shape, group_size",
    [((300, 576), 128), ((65, 1001), 32), ((40, 130), -1), ((3, 7), 3), ((2100, 256), 64)],
)
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_from_the_stored_transpose_is_bitwise_the_same(shape, group_size, symmetric):
    """A Dense kernel stored [K, N] (here in bfloat16, as presets hold it) is
    quantized without a transposed float copy: same codes, scales and zero points
    as quantizing the [N, K] matrix, for partial groups, odd K and N past one slab."""
    import ml_dtypes

    w = trained_like(*shape).astype(ml_dtypes.bfloat16)
    rows = Q.quantize_int4(w.astype(np.float32), group_size, symmetric)
    columns = Q.quantize_int4(Q.Columns.of(np.ascontiguousarray(w.T)), group_size, symmetric)
    for got, want in zip(columns.__dict__.values(), rows.__dict__.values(), strict=True):
        assert (got is None and want is None) or (
            got.dtype == want.dtype and np.array_equal(got, want)
        )


def test_int4_from_the_stored_transpose_names_the_first_non_finite_value():
    w = trained_like(40, 70)
    w[13, 5], w[2, 50] = np.nan, np.inf
    with pytest.raises(Q.NonFiniteWeights, match=r"^row 2, column 50 holds inf$"):
        Q.quantize_int4(Q.Columns.of(np.ascontiguousarray(w.T)), 32, False)
