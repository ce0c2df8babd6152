"""Products with quantized matrices stay within their stated bound of the
dequantizing path (a float matrix, then XLA's product), by every form: the
compiled custom calls for few rows (decoding) and for many (a prefill), and the
XLA forms taken without a compiler.

int8 (XLA form): ``hubquant.layers.products`` splits each input row into two
int8 parts, so an input element is off by at most ``max|x| / 64516`` and an
output by at most that times the row's absolute weight sum. int4, and int8
compiled (few rows or many): the same weights summed in another order (the zero points come off
per group after the sum), so float32 rounding only. Checked on every quantized
projection and the LM head of tiny Gemma and Llama models, int8 and several
int4 layouts.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from keras import ops

import hubquant
from hubquant import synthetic
from hubquant.config import parse_config
from hubquant.layers import native, products

CONFIGS = {
    "int8": "default: {mode: int8}\n",
    "int4 g16 asym": "default: {mode: int4, group_size: 16, symmetric: false}\n",
    "int4 g32 sym": "default: {mode: int4, group_size: 32, symmetric: true}\n",
    "int4 per-channel": "default: {mode: int4, group_size: -1, symmetric: false}\n",
    "int4 g24 ragged": "default: {mode: int4, group_size: 24, symmetric: false}\n",
}
BUILDERS = {"gemma": synthetic.gemma_causal_lm, "llama3": synthetic.llama3_causal_lm}


@pytest.fixture(scope="module", params=[(f, c) for f in BUILDERS for c in CONFIGS], ids=str)
def quantized(request):
    family, config = request.param
    model = BUILDERS[family](seed=0)
    hubquant.quantize(model, parse_config(CONFIGS[config], config))
    return config, model


def _dequantizing(fn, *args, **kwargs):
    """``fn`` with the row products switched off (every call dequantizes)."""
    saved, switch = products.FEW_ROWS, os.environ.get("HUBQUANT_NATIVE")
    products.FEW_ROWS = 0
    os.environ["HUBQUANT_NATIVE"] = "0"
    try:
        return np.asarray(fn(*args, **kwargs), np.float64)
    finally:
        products.FEW_ROWS = saved
        if switch is None:
            del os.environ["HUBQUANT_NATIVE"]
        else:
            os.environ["HUBQUANT_NATIVE"] = switch


def _projections(model):
    return [
        layer
        for layer in model.backbone._flatten_layers(include_self=False)
        if getattr(layer, "_is_quantized", False) and hasattr(layer, "row_map")
    ]


def _bound(x: np.ndarray, weight_rows_abs: np.ndarray) -> np.ndarray:
    """Per output element: max|x| of its row / 64516 times |W| row sums, plus
    float32 rounding of the sums."""
    row_max = np.abs(x).reshape(-1, x.shape[-1]).max(-1)
    return row_max[:, None] * weight_rows_abs[None, :] * (1 / 64516 + 1e-5) + 1e-6


needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler"
)


@pytest.fixture(params=["native", "xla"])
def form(request, monkeypatch):
    """Which form few-row products take: compiled, or XLA's (no compiler)."""
    if request.param == "xla":
        monkeypatch.setenv("HUBQUANT_NATIVE", "0")
    elif not native.available():
        pytest.skip("no compiled products here")
    return request.param


# The XLA forms at one row: int8's split input and int4's one-row reduction
# (2 to 16 rows, int4's XLA form is the dequantized matrix's product). 29 rows:
# the compiled many-row product, with a partial tile of rows.
FORMS = [(1, "native"), (3, "native"), (29, "native"), (1, "xla")]


@pytest.mark.parametrize("rows, form", FORMS, indirect=["form"])
def test_projections_within_bound(quantized, rows, form):
    config, model = quantized
    rng = np.random.default_rng(0)
    checked = differs = 0
    for layer in _projections(model):
        k = layer.hubquant_specs["kernel"].k
        shape = _input_shape(layer, rows=rows)
        x = rng.standard_normal(shape).astype("float32") * 3
        x[..., 0] *= 40  # an outlier channel sets max|x|
        if rows > 1:
            x[1] = 0  # a zero row (padding) must give exactly zero
        got = np.asarray(layer(x), np.float64)
        want = _dequantizing(layer, x)
        w = np.asarray(layer._dequantized("kernel", "float32"))
        rows_x = np.asarray(layer.row_map(x).rows(ops.convert_to_tensor(x))[0])
        bound = _bound(rows_x, np.abs(w).sum(-1))
        diff = np.abs(layer.row_map(x).rows(ops.convert_to_tensor(got - want))[0])
        assert k == rows_x.shape[-1]
        assert np.all(np.asarray(diff) <= bound), layer.path
        checked += 1
        differs += bool(np.any(got != want))
    assert checked >= 7
    if config == "int8" and form == "xla":
        assert differs  # the integer product ran: it rounds unlike the float one


@pytest.mark.parametrize("rows, form", FORMS, indirect=["form"])
def test_lm_head_within_bound(quantized, rows, form):
    embedding = quantized[1].backbone.token_embedding
    x = np.random.default_rng(1).standard_normal((rows, 1, embedding.output_dim))
    x = x.astype("float32")
    got = np.asarray(embedding(x, reverse=True), np.float64)
    want = _dequantizing(embedding, x, reverse=True)
    name = "embeddings" if embedding.tie_weights else "reverse"
    w = np.asarray(embedding._dequantized(name, "float32"))
    bound = _bound(x.reshape(rows, -1), np.abs(w).sum(-1))
    assert np.all(np.abs(got - want).reshape(rows, -1) <= bound)


def test_decoding_uses_row_product_and_many_rows_do_not(monkeypatch):
    monkeypatch.setenv("HUBQUANT_NATIVE", "0")
    spec = hubquant.layers.base.MatrixSpec("int4", 32, False, n=8, k=64)
    assert products.product_for(1, spec) == "int4 row"
    assert products.product_for(2, spec) == "int4 rows"
    assert products.product_for(products.FEW_ROWS, spec) == "int4 rows"
    assert products.product_for(products.FEW_ROWS + 1, spec) is None  # dequantizing
    assert products.product_for(None, spec) is None
    odd_groups = hubquant.layers.base.MatrixSpec("int4", 33, False, n=8, k=66)
    assert products.product_for(1, odd_groups) is None
    int8 = hubquant.layers.base.MatrixSpec("int8", -1, True, n=8, k=64)
    assert products.product_for(1, int8) == "int8 rows"


@pytest.fixture(scope="module")
def smollm2_wide():
    """One block at SmolLM2-135M's real widths: hidden 576 (4.5 groups of 128),
    MLP 1536, 9 query and 3 key/value heads; int4 g128 asymmetric."""
    model = synthetic.llama3_causal_lm(
        seed=0, num_layers=1, hidden_dim=576, intermediate_dim=1536,
        num_query_heads=9, num_key_value_heads=3,
    )  # fmt: skip
    hubquant.quantize(model, parse_config("default: {mode: int4, group_size: 128}\n", "g128"))
    return model


@needs_compiler
def test_compiled_products_are_taken_where_a_compiler_is():
    for rows in (1, products.FEW_ROWS):
        for spec in (
            hubquant.layers.base.MatrixSpec("int4", 128, False, n=1536, k=576),
            hubquant.layers.base.MatrixSpec("int4", -1, True, n=8, k=63),
            hubquant.layers.base.MatrixSpec("int8", -1, True, n=8, k=63),
        ):
            many = "amx" if native.amx() and products.amx_block(spec) else "tiles"
            assert products.product_for(rows, spec) == f"{spec.mode} native"
            assert products.product_for(512 + rows, spec) == f"{spec.mode} {many}"
    assert products.product_for(None, spec) is None


@pytest.mark.parametrize(
    "form, product", [("native", "_int4_native"), ("xla", "_int4_row")], indirect=["form"]
)
def test_decode_takes_the_fast_product_at_real_widths(smollm2_wide, monkeypatch, form, product):
    """Generating, every projection of a 576-wide block (a partial last group)
    and the LM head read their packed codes through the compiled product (or,
    without a compiler, XLA's one-row product), not a float matrix."""
    taken = []
    fast = getattr(products, product)
    monkeypatch.setattr(products, product, lambda *a: taken.append((a[2].n, a[2].k)) or fast(*a))
    smollm2_wide.generate_function = None  # traced afresh for this form
    smollm2_wide.generate(["the cat"], max_length=8)
    head = (smollm2_wide.backbone.vocabulary_size, 576)
    q_o, kv, gate_up, down = (576, 576), (192, 576), (1536, 576), (576, 1536)
    assert sorted(set(taken)) == sorted({q_o, kv, gate_up, down, head})
    assert len(taken) >= 8  # q, k, v, o, gate, up, down and the LM head


@needs_compiler
def test_prefill_takes_the_compiled_many_row_product_at_real_widths(smollm2_wide, monkeypatch):
    """A 40-token forward pass of a 576-wide block: every projection and the LM
    head multiply the packed codes by the compiled many-row product (on AMX
    tiles where the CPU has them)."""
    if not native.available():
        pytest.skip("no compiled products here")
    taken = []
    fast = products._int4_native
    monkeypatch.setattr(
        products, "_int4_native", lambda *a: taken.append((a[2].n, a[2].k, a[3])) or fast(*a)
    )
    ids = np.arange(40, dtype="int32")[None] % 100
    hidden = smollm2_wide.backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    smollm2_wide.backbone.token_embedding(hidden, reverse=True)
    many = "int4 amx" if native.amx() else "int4 tiles"  # g128: whole AMX steps
    head = (smollm2_wide.backbone.vocabulary_size, 576, many)
    shapes = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
    assert sorted(set(taken)) == sorted({*((n, k, many) for n, k in shapes), head})


def _input_shape(layer, rows: int) -> tuple:
    """An input shape with ``rows`` rows for a projection (batch, 1 token, ...)."""
    if not hasattr(layer, "equation"):
        return (rows, 1, layer.hubquant_specs["kernel"].k)
    source = layer.equation.split("->")[0].split(",")[0]
    kernel = layer.equation.split("->")[0].split(",")[1]
    dims = {c: layer.hubquant_kernel_shape[i] for i, c in enumerate(kernel)}
    return tuple(rows if i == 0 else dims.get(c, 1) for i, c in enumerate(source))
