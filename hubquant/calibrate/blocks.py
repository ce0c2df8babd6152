"""Run a backbone's transformer blocks one at a time on calibration activations.

The backbone is run once with every block replaced by the identity: that
yields block 0's input (the embedded tokens, with whatever scaling the family
applies) and, for every block, the keyword arguments the backbone passes it
(padding masks and the like). Each block is then called directly, batch by
batch, with those arguments: no family-specific code.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from keras import ops

from hubquant.errors import HubquantError
from hubquant.layers import products, sharding
from hubquant.paths import layer_at

TOKENS_PER_BATCH = 8192


class BlockInputs:
    """Hidden states for every calibration batch, and each block's extra arguments."""

    def __init__(self, hidden: list, kwargs: list[list[dict]]):
        self.hidden = hidden  # one array [batch, seq, hidden] per batch
        self.kwargs = kwargs  # kwargs[block][batch]

    def run(self, block, index: int) -> None:
        """Replace the hidden states by ``block``'s outputs."""
        self.hidden = [
            _first(block(x, **kw)) for x, kw in zip(self.hidden, self.kwargs[index], strict=True)
        ]

    def feed(self, block, index: int) -> None:
        """Run ``block`` for its side effects (statistics), keep the hidden states."""
        for x, kw in zip(self.hidden, self.kwargs[index], strict=True):
            block(x, **kw)


def walk(backbone, plan, tokens: np.ndarray, last: int):
    """Blocks 0 to ``last`` in order, each yielded as ``(index, block, inputs)``
    with the calibration activations it receives; once the caller is done
    with a block (quantized it, merged it), its outputs become the next
    block's inputs."""
    attr = next(e.attr for e in plan.entries if e.block is not None).split(".")[0]
    blocks = list(getattr(backbone, attr))
    inputs = block_inputs(backbone, blocks, tokens)
    for index, block in enumerate(blocks[: last + 1]):
        yield index, block, inputs
        if index < last:
            inputs.run(block, index)


def each_with_stats(backbone, plan, layers: dict, tokens: np.ndarray, new_stats):
    """``(attr, stats)`` for each of ``layers`` (attr -> entry, inside the
    blocks), block by block: ``new_stats(entry)`` filled from the layer's inputs
    in its block. The caller changes the layer (merges, quantizes) before
    taking the next, and the next block runs on the changed ones."""
    by_block: dict[int, list[str]] = {}
    for attr, entry in layers.items():
        by_block.setdefault(entry.block, []).append(attr)
    for index, block, inputs in walk(backbone, plan, tokens, max(by_block)):
        attrs = by_block.get(index, [])
        stats = {a: new_stats(layers[a]) for a in attrs}
        with recording({a: layer_at(backbone, a) for a in attrs}, stats):
            inputs.feed(block, index)
        for attr in attrs:
            yield attr, stats[attr]


def block_inputs(backbone, blocks: list, tokens: np.ndarray, batch: int = 0) -> BlockInputs:
    """Block 0's inputs and every block's keyword arguments, batch by batch
    (``batch`` windows each; by default as many as make ``TOKENS_PER_BATCH``)."""
    batch = batch or max(1, TOKENS_PER_BATCH // tokens.shape[1])
    hidden, kwargs = [], [[] for _ in blocks]
    for start in range(0, len(tokens), batch):
        seen = []
        with _identity_blocks(blocks, seen):
            backbone(_backbone_inputs(backbone, tokens[start : start + batch]))
        if len(seen) != len(blocks):
            raise HubquantError(
                f"{type(backbone).__name__}: calibration expected the backbone to call each of "
                f"its {len(blocks)} blocks once, but it called {len(seen)}; this family's "
                "blocks cannot be calibrated one by one (use algorithm: rtn)."
            )
        hidden.append(seen[0][0])
        for i, (_, kw, _) in enumerate(sorted(seen, key=lambda s: s[2])):
            kwargs[i].append(kw)
    return BlockInputs(hidden, kwargs)


@contextlib.contextmanager
def _identity_blocks(blocks: list, seen: list):
    for i, block in enumerate(blocks):
        block.call = _recorder(i, seen)
    try:
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("call", None)


def _recorder(index: int, seen: list):
    def call(x, *args, **kwargs):
        if args:
            raise HubquantError(
                f"calibration: block {index} was called with positional arguments after its "
                "input; this family's blocks cannot be run one by one (use algorithm: rtn)."
            )
        seen.append((x, kwargs, index))
        return x

    return call


def _backbone_inputs(backbone, tokens: np.ndarray) -> dict:
    """The backbone's inputs for ``tokens``, split along a distribution's data
    axis (each device computes the activations of its windows)."""
    inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    names = backbone.input if isinstance(backbone.input, dict) else {}
    if "segment_ids" in names:
        inputs["segment_ids"] = np.zeros_like(tokens)
    return {name: sharding.data_split(value) for name, value in inputs.items()}


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


@contextlib.contextmanager
def recording(layers: dict, stats: dict):
    """While active, each layer in ``layers`` (key -> layer) passes its input
    rows to ``stats[key].add`` before computing as usual.

    Layers that read the same tensor in turn (q, k and v; gate and up) get the
    same rows array, so their statistics share one Gram matrix (``gram_of``).
    """
    last: list = [None]  # (input tensor, layer's input order, rows)
    for key, layer in layers.items():
        name = _entry_point(layer)
        setattr(layer, name, _observer(layer, name, stats[key], last))
    try:
        yield
    finally:
        for layer in layers.values():
            layer.__dict__.pop(_entry_point(layer), None)
        _last_gram[:] = [None, None]


def _entry_point(layer) -> str:
    """The method Keras' ``__call__`` runs: ``quantized_call`` once quantized
    (a merge records quantized layers), ``call`` before."""
    return "call" if getattr(layer, "quantization_mode", None) is None else "quantized_call"


def _observer(layer, name: str, stat, last: list):
    original = getattr(type(layer), name).__get__(layer)
    signature = _input_order(layer)

    def call(inputs, *args, **kwargs):
        seen = last[0]
        if seen is None or seen[0] is not inputs or seen[1] != signature:
            last[0] = seen = (inputs, signature, input_rows(layer, inputs))
        stat.add(seen[2])
        return original(inputs, *args, **kwargs)

    return call


def _input_order(layer) -> tuple:
    """How ``input_rows`` lays out the layer's input (``()``: a Dense)."""
    equation = getattr(layer, "equation", None)
    return () if equation is None else products.einsum_input_order(equation)


def input_rows(layer, x) -> jnp.ndarray:
    """A projection's input as float32 ``[rows, K]``, K in the canonical order
    of the kernel's reduction axes (docs/format.md)."""
    x = jnp.asarray(ops.convert_to_numpy(x) if not isinstance(x, jax.Array) else x)
    x = x.astype(jnp.float32)
    order = _input_order(layer)
    if not order:
        return x.reshape(-1, x.shape[-1])
    perm, kept = order
    x = jnp.transpose(x, perm)
    return x.reshape(-1, int(np.prod(x.shape[kept:])))


class HessianStats:
    """``2 X^T X / rows`` of a layer's inputs, accumulated batch by batch (GPTQ)."""

    def __init__(self, k: int):
        self.sum = jnp.zeros((k, k), jnp.float32)
        self.rows = 0

    def add(self, x) -> None:
        self.sum = self.sum + gram_of(x)
        self.rows += x.shape[0]

    def hessian(self) -> np.ndarray:
        return sharding.to_host(self.sum) * (2.0 / max(self.rows, 1))


_last_gram: list = [None, None]  # the rows array last seen and its Gram matrix


def gram_of(x) -> jnp.ndarray:
    """``x^T x``, computed once for the same rows array seen twice in a row."""
    if _last_gram[0] is not x:
        _last_gram[:] = [x, _gram(x)]
    return _last_gram[1]


@jax.jit
def _gram(x):
    return jnp.matmul(x.T, x, precision=lax.Precision.HIGHEST)


class ActivationStats(HessianStats):
    """Mean absolute input per channel and ``X^T X / rows`` (AWQ)."""

    def __init__(self, k: int):
        super().__init__(k)
        self.abs_sum = jnp.zeros((k,), jnp.float32)

    def add(self, x) -> None:
        super().add(x)
        self.abs_sum = self.abs_sum + jnp.sum(jnp.abs(x), axis=0)

    def magnitude(self) -> np.ndarray:
        return sharding.to_host(self.abs_sum) / max(self.rows, 1)

    def gram(self) -> np.ndarray:
        return sharding.to_host(self.sum) / max(self.rows, 1)
