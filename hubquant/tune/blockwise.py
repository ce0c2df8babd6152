"""The Fisher diagonal of a model held a block at a time (``tune`` on a preset).

The same quantity as fisher.py, ``E[(d log p(y) / d w)^2]`` per calibration
window, computed without the model's matrices in memory at once: each block's
matrices are read when the block runs and dropped after.

- Forward: the blocks' inputs for every window (calibrate/blocks.py), then
  each block in turn; the hidden states between blocks are kept.
- Top: the layers outside the blocks (token table, final norm, LM head, or an
  encoder's pooling) run on the last block's output, the blocks spliced out
  (``_splice``); that gives the cotangent of the last hidden state, labels drawn
  from the model's output with the same key per window as fisher.py draws.
- Backward: from the last block down, each block's matrices are read again
  and the window's gradient taken through that block alone (``jax.vjp``);
  its squares are the block's Fisher, and the input cotangent goes down.
- Bottom: the layers outside the blocks once more, the cotangent of the
  first block's input spliced in, so a tied token table gets the gradient of
  both its uses (the lookup and the LM head) before it is squared.

``read(entry)`` gives a matrix's float value as stored (from the variable, or
from disk for a streamed preset).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from keras import StatelessScope

from hubquant._memory import release_free_memory
from hubquant.calibrate import blocks as blocks_mod
from hubquant.paths import backbone_of


def fisher_by_block(model, entries, variables, read, tokens, objective, seed=0, report=print):
    """Yield ``(i, value, fisher)`` for every ``entries[i]`` (``variables[i]``
    holds it; ``value`` is ``read(entries[i])``, ``fisher`` its Fisher
    diagonal per token or window, float32 in the variable's shape): block by
    block from the last, then the matrices outside the blocks."""
    walk = BlockWalk(model, entries, variables, read)
    keys = _window_keys(seed, len(tokens))
    hidden = walk.forward(tokens, report)
    outer = walk.outer(objective)
    cotangent = [
        outer.top_cotangent(h, ids, k) for h, ids, k in zip(hidden[-1], tokens, keys, strict=True)
    ]
    count = objective.count(tokens)
    for b in reversed(range(len(walk.blocks))):
        sums, cotangent = walk.backward(b, hidden[b], cotangent)
        report(f"sensitivity: block {b + 1} of {len(walk.blocks)} (backward)")
        yield from _each(walk.by_block[b], sums, count)
    yield from _each(walk.outside, outer.fisher(hidden[-1], cotangent, tokens, keys), count)


def _each(indices: list, rows: list, count: int):
    """``(i, value, fisher)`` one at a time, each let go here once yielded
    (a token table's Fisher is as large as the table, in float32)."""
    for i in indices:
        yield (i, *_per_token(rows.pop(0), count))
        release_free_memory()


def _per_token(row: tuple, count: int) -> tuple:
    value, sums = row
    return value, np.asarray(sums / count)


def float_outputs(model, entries, variables, read, tokens, objective):
    """The model's outputs for each window of ``tokens`` (a list), run a block at a time."""
    walk = BlockWalk(model, entries, variables, read)
    hidden = walk.forward(tokens, lambda *a: None, keep=False)
    outer = walk.outer(objective)
    return [outer.outputs(h, ids) for h, ids in zip(hidden[-1], tokens, strict=True)]


class BlockWalk:
    """A model's blocks and the planned matrices of each (by entry index)."""

    def __init__(self, model, entries, variables, read):
        self.model, self.read = model, read
        self.backbone = backbone_of(model)
        attr = next(e.attr for e in entries if e.block is not None).split(".")[0]
        self.blocks = list(getattr(self.backbone, attr))
        self.by_block = [[] for _ in self.blocks]
        self.outside = []
        for i, e in enumerate(entries):
            (self.outside if e.block is None else self.by_block[e.block]).append(i)
        self.entries, self.variables = entries, variables
        self.kwargs = None
        self.kinds = _Blocks()

    def forward(self, tokens, report, keep: bool = True) -> list[list]:
        """The hidden states entering each block and leaving the last,
        ``[block][window]`` (only the last list unless ``keep``)."""
        inputs = blocks_mod.block_inputs(self.backbone, self.blocks, tokens, batch=1)
        self.kwargs = inputs.kwargs
        states = [inputs.hidden]
        for b, block in enumerate(self.blocks):
            step = self.kinds.step(block, self._planned(b), self.kwargs[b][0])
            values = self._values(b)
            out = [
                step.forward(values, x, kw)
                for x, kw in zip(states[-1], self.kwargs[b], strict=True)
            ]
            states = [*states, out] if keep else [out]
            report(f"sensitivity: block {b + 1} of {len(self.blocks)} (forward)")
        return states

    def backward(self, b: int, hidden: list, cotangent: list):
        """Block ``b``'s ``(value, summed squared gradients)`` per planned matrix,
        and its input cotangents."""
        step = self.kinds.step(self.blocks[b], self._planned(b), self.kwargs[b][0])
        values = self._values(b)
        sums = [jnp.zeros(np.shape(v), jnp.float32) for v in values]
        below = []
        for x, kw, dy in zip(hidden, self.kwargs[b], cotangent, strict=True):
            squares, dx = step.backward(values, x, kw, dy)
            sums = [s + q for s, q in zip(sums, squares, strict=True)]
            below.append(dx)
        return list(zip(values, sums, strict=True)), below

    def outer(self, objective) -> Outer:
        return Outer(self, objective)

    def _values(self, b: int) -> list:
        return [jnp.asarray(self.read(self.entries[i])) for i in self.by_block[b]]

    def _planned(self, b: int) -> list:
        return [self.variables[i] for i in self.by_block[b]]


class Outer:
    """The layers outside the blocks, with the blocks spliced out."""

    def __init__(self, walk: BlockWalk, objective):
        self.walk, self.objective = walk, objective
        self.indices = walk.outside
        self.planned = [walk.variables[i] for i in self.indices]
        self.values = [jnp.asarray(walk.read(walk.entries[i])) for i in self.indices]

        def log_likelihood(values, top, dx, ids, key):
            outputs = self._call(values, top, dx, ids)
            return objective.log_likelihood(outputs, key)

        self._top = jax.jit(jax.grad(log_likelihood, argnums=1))
        grad = jax.grad(log_likelihood, argnums=0)

        def accumulate(sums, values, top, dx, ids, key):
            grads = grad(values, top, dx, ids, key)
            return [s + jnp.square(g.astype(jnp.float32)) for s, g in zip(sums, grads, strict=True)]

        self._accumulate = jax.jit(accumulate, donate_argnums=0)  # sums updated in place
        self._outputs = jax.jit(self._call)

    def top_cotangent(self, top, ids, key):
        return self._top(self.values, top, jnp.zeros_like(top), _window(ids), key)

    def fisher(self, tops, cotangents, tokens, keys):
        sums = [jnp.zeros(np.shape(v), jnp.float32) for v in self.values]
        for top, dx, ids, key in zip(tops, cotangents, tokens, keys, strict=True):
            sums = self._accumulate(sums, self.values, top, dx, _window(ids), key)
        return list(zip(self.values, sums, strict=True))

    def outputs(self, top, ids):
        return self._outputs(self.values, top, jnp.zeros_like(top), _window(ids))

    def _call(self, values, top, dx, ids):
        """The model's outputs with every block passing its input on but the
        last, which returns ``top`` and sends ``dx`` down (``_splice``)."""
        blocks = self.walk.blocks
        for block in blocks[:-1]:
            block.call = lambda x, *a, **k: x
        blocks[-1].call = lambda x, *a, **k: _splice(x, top, dx)
        mapping = list(zip(self.planned, values, strict=True))
        try:
            with StatelessScope(state_mapping=mapping):
                return self.walk.model.call(self.objective.inputs(ids))
        finally:
            for block in blocks:
                block.__dict__.pop("call", None)


@jax.custom_vjp
def _splice(x, top, dx):
    """``top`` forward; backward, ``dx`` for ``x`` and the incoming cotangent
    for ``top``: the blocks' own gradient is taken block by block instead."""
    return top


def _splice_forward(x, top, dx):
    return top, dx


def _splice_backward(dx, g):
    return dx, g, jnp.zeros_like(dx)


_splice.defvjp(_splice_forward, _splice_backward)


class _Blocks:
    """One compiled forward and backward per kind of block: blocks of the same
    class, config, variable shapes and constant arguments share them (a
    model's blocks are mostly alike), each called with its own values."""

    def __init__(self):
        self.compiled = {}

    def step(self, block, planned: list, kwargs: dict) -> _Step:
        trainable = list(block.trainable_variables)
        index = {id(v): j for j, v in enumerate(trainable)}
        positions = tuple(index[id(v)] for v in planned)
        rest = _split_kwargs(kwargs)[1]  # the same for every window
        key = _kind(block, positions, rest)
        if key not in self.compiled:
            self.compiled[key] = _Compiled(block, positions, rest)
        return _Step(self.compiled[key], block, positions)


class _Step:
    """One block's compiled calls, given its planned matrices' values."""

    def __init__(self, compiled: _Compiled, block, positions: tuple):
        self.compiled, self.positions = compiled, positions
        self.trainable = list(block.trainable_variables)
        self.others = [v.value for v in block.non_trainable_variables]

    def forward(self, values, x, kwargs):
        full = self._full(values)
        return self.compiled.forward(full, self.others, x, _split_kwargs(kwargs)[0])

    def backward(self, values, x, kwargs, dy):
        full = self._full(values)
        return self.compiled.backward(full, self.others, x, _split_kwargs(kwargs)[0], dy)

    def _full(self, values) -> list:
        given = dict(zip(self.positions, values, strict=True))
        return [given[j] if j in given else v.value for j, v in enumerate(self.trainable)]


class _Compiled:
    """A block's call as a pure function of every variable's value, compiled."""

    def __init__(self, template, positions: tuple, rest: dict):
        self.template, self.positions, self.rest = template, positions, rest
        self.forward = jax.jit(self._call)
        self.backward = jax.jit(self._backward)

    def _call(self, trainable, others, x, arrays):
        out, _ = self.template.stateless_call(trainable, others, x, **arrays, **self.rest)
        return blocks_mod._first(out)

    def _backward(self, trainable, others, x, arrays, dy):
        def run(planned, h):
            full = list(trainable)
            for j, v in zip(self.positions, planned, strict=True):
                full[j] = v
            return self._call(full, others, h, arrays)

        planned = [trainable[j] for j in self.positions]
        y, pullback = jax.vjp(run, planned, x)
        grads, dx = pullback(dy.astype(y.dtype))
        return [jnp.square(g.astype(jnp.float32)) for g in grads], dx


def _kind(block, positions: tuple, rest: dict) -> str:
    """What a block's compiled call depends on: the class and settings of it
    and every layer inside it (public plain attributes: KerasHub's
    ``get_config`` fails on some blocks), its variables' shapes and dtypes,
    which of them are given, and the constant arguments."""
    settings = [(type(layer).__qualname__, _settings(layer)) for layer in block._flatten_layers()]
    shapes = [(tuple(v.shape), str(v.dtype)) for v in block.weights]
    return json.dumps([settings, shapes, positions, sorted(rest.items())], default=repr)


def _settings(layer) -> dict:
    plain = (int, float, str, bool, type(None))
    return {
        k: v
        for k, v in sorted(vars(layer).items())
        if isinstance(v, plain) and not k.startswith("_") and k != "name"
    }


def _split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    """A block's keyword arguments: arrays (traced) and the rest (constants)."""
    arrays = {k: v for k, v in kwargs.items() if hasattr(v, "shape")}
    return arrays, {k: v for k, v in kwargs.items() if k not in arrays}


def _window(ids) -> jnp.ndarray:
    return jnp.asarray(np.asarray(ids, np.int32)[None])


def _window_keys(seed: int, count: int) -> list:
    """The key of each window, as fisher.py splits them."""
    key, keys = jax.random.PRNGKey(seed), []
    for _ in range(count):
        key, sub = jax.random.split(key)
        keys.append(sub)
    return keys
