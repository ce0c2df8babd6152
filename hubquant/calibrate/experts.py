"""Mixture-of-experts banks calibrated per expert, from the tokens routed to it.

While the float block runs on the calibration activations:

- the router layer (the recipe's ``moe.router`` in the same block) gives each
  token's logits, and the ``top_k`` of the sparse block (or of the router's
  own layer) says which experts the token goes to;
- the bank's input rows feed every matrix but the last (gate, up, or a fused
  gate+up), per expert, only from that expert's tokens;
- the last matrix (down) reads the bank's intermediate activations. Every
  KerasHub bank ends in ``einsum("eti,eih->eth", hidden, down)`` (plus a bias
  in some families), so running the float bank with ``down`` set to zeros and
  then to slices of the identity returns ``hidden`` exactly, whatever the
  family's activation: ``ceil(I / H) + 1`` extra passes of the bank.

Each expert is then quantized by the layer's algorithm on its own slice of
the canonical ``[experts * out, in]`` matrix. An expert that received fewer
than ``MIN_EXPERT_TOKENS`` tokens is rounded to nearest instead, and a note
names it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from hubquant import quantizers
from hubquant.calibrate import algorithms
from hubquant.errors import HubquantError
from hubquant.layers.sharding import to_host
from hubquant.quantizers import QuantizedMatrix

MIN_EXPERT_TOKENS = 16


class ExpertStats:
    """Per-expert ``X^T X`` (and ``sum |x|`` for AWQ) of one bank input."""

    def __init__(self, experts: int, k: int, awq: bool):
        self.sum = np.zeros((experts, k, k), np.float32)
        self.abs_sum = np.zeros((experts, k), np.float32) if awq else None
        self.rows = np.zeros(experts, np.int64)

    def add(self, tokens: list[np.ndarray], x: np.ndarray) -> None:
        """``tokens[e]``: rows of ``x`` routed to expert ``e``; ``x``: ``[T, K]``
        (the bank input, shared by all experts) or ``[experts, T, K]``."""
        for e, rows in enumerate(tokens):
            if len(rows):
                xe = x[rows] if x.ndim == 2 else x[e, rows]
                self.sum[e] += xe.T @ xe
                if self.abs_sum is not None:
                    self.abs_sum[e] += np.abs(xe).sum(axis=0)
                self.rows[e] += len(rows)

    def expert(self, e: int) -> _Expert:
        abs_sum = None if self.abs_sum is None else self.abs_sum[e]
        return _Expert(self.sum[e], abs_sum, int(self.rows[e]))


@dataclass(frozen=True)
class _Expert:
    """One expert's statistics, read as ``algorithms.quantize_matrix`` expects."""

    sum: np.ndarray
    abs_sum: np.ndarray | None
    rows: int

    def hessian(self) -> np.ndarray:
        return self.sum * (2.0 / max(self.rows, 1))

    def gram(self) -> np.ndarray:
        return self.sum / max(self.rows, 1)

    def magnitude(self) -> np.ndarray:
        return self.abs_sum / max(self.rows, 1)


@dataclass
class Bank:
    """One planned expert bank, its router, and its statistics."""

    layer: object
    router: object
    top_k: int
    entries: list  # PlanEntry per planned matrix
    inputs: ExpertStats | None = None  # read by every matrix but the last
    hidden: ExpertStats | None = None  # read by the last (down) matrix

    @property
    def down(self) -> str:
        return list(self.layer.hubquant_bank_shapes)[-1]

    def stats_for(self, matrix: str) -> ExpertStats:
        return self.hidden if matrix == self.down else self.inputs


def new_bank(backbone, layer, router_attr: str | None, entries: list) -> Bank:
    """Statistics holders for ``layer``'s planned matrices; fails with a clear
    message where the recipe names no router in that block."""
    from hubquant.surgery import layer_at

    first = entries[0]
    if router_attr is None:
        raise HubquantError(
            f"{first.path} ({first.role}): {first.algorithm} needs the recipe's moe.router "
            "role in the same block to know which tokens reach each expert."
        )
    shapes = layer.hubquant_bank_shapes
    experts = next(iter(shapes.values()))[0]
    bank = Bank(layer, layer_at(backbone, router_attr), _top_k(backbone, router_attr), entries)
    awq = first.algorithm == "awq"
    for entry in entries:
        k = shapes[entry.matrix][1]
        if entry.matrix == bank.down:
            bank.hidden = ExpertStats(experts, k, awq)
        elif bank.inputs is None:
            bank.inputs = ExpertStats(experts, k, awq)
    return bank


def _top_k(backbone, router_attr: str) -> int:
    """``top_k`` of the nearest layer above the router that has one."""
    from hubquant.surgery import layer_at

    parts = router_attr.split(".")
    for end in range(len(parts) - 1, 0, -1):
        top_k = getattr(layer_at(backbone, ".".join(parts[:end])), "top_k", None)
        if isinstance(top_k, int):
            return top_k
    raise HubquantError(
        f"{router_attr}: no layer above the router has a top_k attribute; cannot tell "
        "which experts each calibration token reaches (use algorithm: rtn for moe.experts)."
    )


@contextlib.contextmanager
def recording(banks: list[Bank]):
    """While active, each bank's router and the bank itself feed its statistics."""
    saved = []
    for bank in banks:
        logits: list = [None]
        for layer, wrap in ((bank.router, _router_observer), (bank.layer, _bank_observer)):
            saved.append((layer, layer.__dict__.get("call")))
            layer.call = wrap(layer, bank, logits)
    try:
        yield
    finally:
        for layer, previous in reversed(saved):
            layer.__dict__.pop("call", None)
            if previous is not None:
                layer.call = previous


def _current_call(layer):
    """The call in effect: another recorder's wrapper if one is set."""
    return layer.__dict__.get("call") or type(layer).call.__get__(layer)


def _router_observer(layer, bank: Bank, logits: list):
    original = _current_call(layer)

    def call(inputs, *args, **kwargs):
        out = original(inputs, *args, **kwargs)
        values = to_host(out).astype(np.float32)
        logits[0] = values.reshape(-1, values.shape[-1])
        return out

    return call


def _bank_observer(layer, bank: Bank, logits: list):
    original = _current_call(layer)

    def call(inputs, *args, **kwargs):
        x = to_host(inputs).astype(np.float32)
        x = x.reshape(-1, x.shape[-1])
        if logits[0] is None or len(logits[0]) != len(x):
            raise HubquantError(
                f"{layer.path}: the router did not run on the bank's {len(x)} tokens just "
                "before the bank; cannot route calibration tokens to experts."
            )
        tokens = expert_tokens(logits[0], bank.top_k)
        if bank.inputs is not None:
            bank.inputs.add(tokens, x)
        if bank.hidden is not None:
            bank.hidden.add(tokens, down_inputs(layer, original, inputs, bank.down))
        logits[0] = None
        return original(inputs, *args, **kwargs)

    return call


def expert_tokens(logits: np.ndarray, top_k: int) -> list[np.ndarray]:
    """Token indices routed to each expert (a column of ``logits``): the
    ``top_k`` largest logits of each token."""
    experts = logits.shape[1]
    chosen = np.argsort(-logits, axis=-1, kind="stable")[:, :top_k].ravel()
    token = np.repeat(np.arange(len(logits)), top_k)
    order = np.argsort(chosen, kind="stable")
    counts = np.bincount(chosen, minlength=experts)
    return np.split(token[order], np.cumsum(counts)[:-1])


def down_inputs(layer, call, inputs, name: str) -> np.ndarray:
    """The down matrix's input ``[experts, T, I]``, recovered by probing the
    float bank with ``name`` set to zeros, then to slices of the identity."""
    var = getattr(layer, name)
    experts, inner, width = (int(d) for d in var.shape)
    saved = to_host(var)
    parts = []
    try:
        var.assign(np.zeros(var.shape, "float32"))
        bias = _outputs(call(inputs))
        for start in range(0, inner, width):
            probe = np.zeros((inner, width), "float32")
            count = min(width, inner - start)
            probe[start + np.arange(count), np.arange(count)] = 1.0
            var.assign(np.broadcast_to(probe, var.shape))
            parts.append(_outputs(call(inputs)) - bias)
    finally:
        var.assign(saved)
    return np.concatenate(parts, axis=-1)[..., :inner].reshape(experts, -1, inner)


def _outputs(out) -> np.ndarray:
    return to_host(out).astype(np.float32)


def quantize_bank(bank: Bank) -> list[str]:
    """Quantize every planned matrix expert by expert; notes on fallbacks."""
    floats = bank.layer._float_matrices()
    values, notes = {}, []
    for entry in bank.entries:
        fm = floats[entry.matrix]
        w = fm.to_matrix(getattr(bank.layer, fm.attr))
        matrix, input_scale, few = _per_expert(w, entry, bank.stats_for(entry.matrix))
        values[entry.matrix] = matrix
        if input_scale is not None:
            values[f"{entry.matrix}_input_scale"] = input_scale
        if few:
            notes.append(
                f"{entry.path} ({entry.role}, {entry.matrix}): experts {few} received fewer "
                f"than {MIN_EXPERT_TOKENS} calibration tokens; quantized by round-to-nearest"
            )
    bank.layer.quantize(bank.entries[0].mode, values=values)
    return notes


def _per_expert(w: np.ndarray, entry, stats: ExpertStats):
    """Codes for ``w`` ``[experts * out, in]``, each expert from its own statistics."""
    experts = len(stats.rows)
    out = w.shape[0] // experts
    parts, scales, few = [], [], []
    for e in range(experts):
        we = w[e * out : (e + 1) * out]
        if stats.rows[e] < MIN_EXPERT_TOKENS:
            few.append(e)
            args = (entry.mode, entry.group_size, entry.symmetric, entry.clip)
            parts.append(quantizers.quantize(we, *args))
            scales.append(np.ones(w.shape[1], np.float32))
            continue
        matrix, scale = algorithms.quantize_matrix(we, entry, stats.expert(e))
        parts.append(matrix)
        scales.append(scale)
    input_scale = np.stack(scales) if entry.algorithm == "awq" else None
    return _stacked(parts), input_scale, few


def _stacked(parts: list[QuantizedMatrix]) -> QuantizedMatrix:
    zero = None if parts[0].zero is None else np.concatenate([p.zero for p in parts])
    return QuantizedMatrix(
        np.concatenate([p.codes for p in parts]), np.concatenate([p.scale for p in parts]), zero
    )
