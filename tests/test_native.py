"""The compiled products (few rows and many): built once and reused, harmless to the
process's floating point, switched off on request or when no compiler works (a
warning, then the XLA forms), and differentiable with respect to their input
(LoRA training on a few rows)."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

import hubquant
from hubquant import synthetic
from hubquant.config import parse_config
from hubquant.layers import native, products

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"
)


def test_built_once_into_the_cache(native_cache):
    first = native._built()
    stamp = first.stat().st_mtime_ns
    assert first.parent.parent == type(first)(native_cache)
    assert native._built() == first and first.stat().st_mtime_ns == stamp


def test_loading_keeps_the_process_floating_point_state():
    """The library is built without -ffast-math, whose start-up code would make
    every later float operation of the process flush subnormals to zero."""
    assert native._registered()
    tiny = np.nextafter(np.float64(0), 1)
    assert tiny * np.float64(1.0) > 0 and np.float32(1e-45) * np.float32(1.0) > 0


def test_switched_off_by_the_environment(monkeypatch):
    spec = hubquant.layers.base.MatrixSpec("int4", 128, False, n=8, k=256)
    assert native.available()
    monkeypatch.setenv("HUBQUANT_NATIVE", "0")
    assert not native.available()
    assert products.product_for(1, spec) == "int4 row"


def test_a_failing_compiler_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("HUBQUANT_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(OSError):
        native._built()
    with pytest.warns(UserWarning, match="int4 and int8 decoding take the slower XLA path"):
        assert native._library.__wrapped__() is None
    assert not any(tmp_path.rglob("*.so"))


@pytest.mark.parametrize("rows", [1, 24])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_input_gradient_equals_the_dequantized_one(mode, rows, monkeypatch):
    """d(sum(y^2))/dx through the compiled products of one row and of many
    rows (and XLA's forms) equals the one through the dequantizing path,
    within float32 rounding (1e-5 of the largest; 1e-4 on AMX tiles, whose
    products keep about 15 bits of their inputs)."""
    model = synthetic.llama3_causal_lm(seed=0, num_layers=1)
    hubquant.quantize(model, parse_config(f"default: {{mode: {mode}, group_size: 32}}\n", "c"))
    layer = model.backbone.get_layer("transformer_layer_0")._feedforward_output_dense
    x = np.random.default_rng(0).standard_normal((rows, 1, layer.hubquant_specs["kernel"].k))

    def gradient():
        return np.asarray(jax.grad(lambda v: (layer(v) ** 2).sum())(x.astype("float32")))

    spec = layer.hubquant_specs["kernel"]
    kind = "native" if rows == 1 else _many_row_kind(spec)
    assert products.product_for(rows, spec) == f"{mode} {kind}"
    compiled = gradient()
    monkeypatch.setenv("HUBQUANT_NATIVE", "0")
    xla = gradient()
    monkeypatch.setattr(products, "FEW_ROWS", 0)
    want = gradient()
    worst = 1e-4 if kind == "amx" else 1e-5
    np.testing.assert_allclose(compiled, want, rtol=1e-4, atol=worst * np.abs(want).max())
    np.testing.assert_allclose(xla, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _many_row_kind(spec) -> str:
    """The many-row product this machine takes for ``spec``."""
    return "amx" if native.amx() and products.amx_block(spec) else "tiles"


@pytest.mark.parametrize(
    "mode, group_size, symmetric, n, k",
    [
        ("int4", 32, False, 70, 96),  # a partial panel of columns
        ("int4", 24, True, 33, 100),  # a partial last group
        ("int4", -1, False, 5, 64),  # one group per row, fewer rows than a panel
        ("int4", -1, True, 9, 101),  # one group of an odd width
        ("int4", 64, True, 40, 200),  # a partial last group of whole tile steps
        ("int4", 128, False, 40, 576),  # 4.5 groups, SmolLM2's hidden width
        ("int8", -1, True, 33, 63),
        ("int8", -1, True, 20, 1100),  # blocks of 512 inputs, the last partial
    ],
)
@pytest.mark.parametrize("rows", [17, 29])
@pytest.mark.parametrize("kernel", ["tiles", "amx"])
def test_many_row_product_equals_the_dequantized_matrix(
    mode, group_size, symmetric, n, k, rows, kernel, monkeypatch
):
    """The compiled many-row products (a prefill) equal ``x @ W.T`` of the
    dequantized matrix, for ragged panels, row tiles and groups: the float
    tiles within float32 rounding; the AMX tiles, whose inputs keep about 15
    bits (two int8 parts per block), within ``max|x| / 64516`` of each input
    (an outlier channel included) times the matrix row's absolute sum."""
    from hubquant import quantizers
    from hubquant.layers.base import MatrixSpec

    if kernel == "amx" and not native.amx():
        pytest.skip("no AMX tiles on this CPU")
    monkeypatch.setenv("HUBQUANT_AMX", "1" if kernel == "amx" else "0")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)).astype("float32")
    q = quantizers.quantize(w, mode, group_size, symmetric)
    spec = MatrixSpec(mode, group_size, symmetric, n=n, k=k)
    parts = [q.codes, q.scale] + ([] if q.zero is None else [q.zero])
    x = rng.standard_normal((rows, k)).astype("float32")
    x[:, k // 3] *= 40.0
    kind = _many_row_kind(spec) if kernel == "amx" else "tiles"
    assert products.product_for(rows, spec) == f"{mode} {kind}"
    got = np.asarray(products.row_product(jax.numpy.asarray(x), parts, spec))
    size = None if mode == "int8" else group_size
    matrix = quantizers.dequantize(q, k, size).astype("float64")
    want = x.astype("float64") @ matrix.T
    bound = 1e-5 * np.abs(x).sum(-1, keepdims=True) * np.abs(w).max()
    if kind == "amx":
        bound = bound + np.abs(x).max(-1, keepdims=True) / 64516 * np.abs(matrix).sum(-1)
    assert np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("kernel", ["tiles", "amx"])
def test_many_row_product_keeps_non_finite_inputs_to_their_rows(kernel, monkeypatch):
    """A NaN or infinite input makes its row's outputs non-finite, as the float
    product does, and leaves the other rows as they were."""
    from hubquant import quantizers
    from hubquant.layers.base import MatrixSpec

    if kernel == "amx" and not native.amx():
        pytest.skip("no AMX tiles on this CPU")
    monkeypatch.setenv("HUBQUANT_AMX", "1" if kernel == "amx" else "0")
    rng = np.random.default_rng(1)
    q = quantizers.quantize(rng.standard_normal((40, 256)).astype("float32"), "int4", 128, False)
    spec = MatrixSpec("int4", 128, False, n=40, k=256)
    x = rng.standard_normal((20, 256)).astype("float32")
    clean = np.asarray(products.row_product(x, [q.codes, q.scale, q.zero], spec))
    x[3, 7], x[5, 200] = np.nan, np.inf
    got = np.asarray(products.row_product(x, [q.codes, q.scale, q.zero], spec))
    assert not np.isfinite(got[[3, 5]]).any()
    rest = [i for i in range(20) if i not in (3, 5)]
    np.testing.assert_array_equal(got[rest], clean[rest])


def test_amx_switched_off_by_the_environment(monkeypatch):
    spec = hubquant.layers.base.MatrixSpec("int4", 128, False, n=8, k=256)
    monkeypatch.setenv("HUBQUANT_AMX", "0")
    assert not native.amx()
    assert products.product_for(512, spec) == "int4 tiles"
