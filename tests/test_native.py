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
        assert native._registered.__wrapped__() is False
    assert not any(tmp_path.rglob("*.so"))


@pytest.mark.parametrize("rows", [1, 24])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_input_gradient_equals_the_dequantized_one(mode, rows, monkeypatch):
    """d(sum(y^2))/dx through the compiled products of one row and of many
    rows (and XLA's forms) equals the one through the dequantizing path,
    within float32 rounding."""
    model = synthetic.llama3_causal_lm(seed=0, num_layers=1)
    hubquant.quantize(model, parse_config(f"default: {{mode: {mode}, group_size: 32}}\n", "c"))
    layer = model.backbone.get_layer("transformer_layer_0")._feedforward_output_dense
    x = np.random.default_rng(0).standard_normal((rows, 1, layer.hubquant_specs["kernel"].k))

    def gradient():
        return np.asarray(jax.grad(lambda v: (layer(v) ** 2).sum())(x.astype("float32")))

    kind = "native" if rows == 1 else "tiles"
    assert products.product_for(rows, layer.hubquant_specs["kernel"]) == f"{mode} {kind}"
    compiled = gradient()
    monkeypatch.setenv("HUBQUANT_NATIVE", "0")
    xla = gradient()
    monkeypatch.setattr(products, "FEW_ROWS", 0)
    want = gradient()
    for got in (compiled, xla):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize(
    "mode, group_size, symmetric, n, k",
    [
        ("int4", 32, False, 70, 96),  # a partial panel of columns
        ("int4", 24, True, 33, 100),  # a partial last group
        ("int4", -1, False, 5, 64),  # one group per row, fewer rows than a panel
        ("int4", 128, False, 40, 576),  # 4.5 groups, SmolLM2's hidden width
        ("int8", -1, True, 33, 63),
    ],
)
@pytest.mark.parametrize("rows", [17, 29])
def test_many_row_product_equals_the_dequantized_matrix(mode, group_size, symmetric, n, k, rows):
    """The compiled many-row product (a prefill) equals ``x @ W.T`` of the
    dequantized matrix within float32 rounding, for ragged panels, row tiles
    and groups."""
    from hubquant import quantizers
    from hubquant.layers.base import MatrixSpec

    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)).astype("float32")
    q = quantizers.quantize(w, mode, group_size, symmetric)
    spec = MatrixSpec(mode, group_size, symmetric, n=n, k=k)
    parts = [q.codes, q.scale] + ([] if q.zero is None else [q.zero])
    x = rng.standard_normal((rows, k)).astype("float32")
    assert products.product_for(rows, spec) == f"{mode} tiles"
    got = np.asarray(products.row_product(jax.numpy.asarray(x), parts, spec))
    size = None if mode == "int8" else group_size
    want = x.astype("float64") @ quantizers.dequantize(q, k, size).astype("float64").T
    bound = 1e-5 * np.abs(x).sum(-1, keepdims=True) * np.abs(w).max()
    assert np.all(np.abs(got - want) <= bound)
