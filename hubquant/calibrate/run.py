"""The entry point: quantize a Plan's calibrated layers block by block.

Projections are calibrated on their inputs, expert banks expert by expert on
the tokens routed to each (``experts.py``). Layers outside the transformer
blocks (token table, LM head) are quantized by round-to-nearest, and the Plan
returned says so (``algorithm: rtn``) with a note for each.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hubquant.calibrate import blocks as blocks_mod
from hubquant.calibrate import experts, fold
from hubquant.calibrate.calibration import (
    Calibration,
    calibration_tokens,
    default,
)
from hubquant.errors import ConfigError
from hubquant.paths import backbone_of, layer_at
from hubquant.plan import Plan, PlanEntry

CALIBRATED_LAYERS = ("QuantDense", "QuantEinsumDense")


def needs_calibration(plan: Plan) -> bool:
    return any(e.algorithm != "rtn" for e in plan.quantized)


def calibrate_plan(model, plan: Plan, calibration=None, on_layer=None, before_block=None):
    """Quantize every planned layer of ``model`` (already swapped); return the
    Plan as applied (fallbacks to round-to-nearest and AWQ folds recorded,
    ``notes`` set).

    ``calibration``: a ``Calibration`` (default: the one the Plan carries, from
    its config), or the token ids themselves (int ``[samples, seq_len]``). ``before_block(attrs)``:
    called with a block's calibrated layers before it runs (the streaming
    path reads their float matrices then). Layers already quantized (while
    streaming) are left as they are.
    """
    backbone = backbone_of(model)
    if isinstance(calibration, np.ndarray):
        tokens = calibration.astype("int32")
    else:
        tokens = calibration_tokens(model, calibration_for(plan, calibration))
    by_block, direct, notes = _split(plan)
    for attr, entries in direct.items():
        _quantize_rtn(backbone, attr, entries, on_layer)
    folded = {}
    if by_block:
        more, folded = _run_blocks(backbone, plan, by_block, tokens, on_layer, before_block)
        notes += more
    fallback = {(e.attr, e.matrix) for es in direct.values() for e in es if e.algorithm != "rtn"}
    entries = _as_applied(plan, fallback, folded)
    return dataclasses.replace(plan, entries=entries, notes=tuple(notes))


def _as_applied(plan: Plan, fallback: set, folded: dict) -> tuple[PlanEntry, ...]:
    """The entries with round-to-nearest fallbacks and AWQ folds recorded."""
    entries = []
    for e in plan.entries:
        if (e.attr, e.matrix) in fallback:
            e = dataclasses.replace(e, algorithm="rtn", algorithm_options=None)
        elif e.attr in folded:
            e = dataclasses.replace(e, folded_into=folded[e.attr])
        entries.append(e)
    return tuple(entries)


def _run_blocks(backbone, plan: Plan, by_block: dict, tokens, on_layer, before_block=None):
    """Block by block: statistics on the float block, quantize, pass outputs on."""
    block_list = _block_list(backbone, plan)
    inputs = blocks_mod.block_inputs(backbone, block_list, tokens)
    routers = {e.block: e.attr for e in plan.entries if e.role == "moe.router"}
    last, notes, folded = max(by_block), [], {}
    for index, block in enumerate(block_list[: last + 1]):
        planned = by_block.get(index, {})
        if planned:
            if before_block is not None:
                before_block(list(planned))
            step = _BlockStep(backbone, plan, index, planned, routers.get(index), on_layer)
            notes += step.run(block, inputs)
            folded.update(step.folded)
        if index < last:
            inputs.run(block, index)
    return notes, folded


def calibrated_by_block(plan: Plan) -> dict[int, dict[str, list[PlanEntry]]]:
    """The layers calibration quantizes block by block: attr -> entries, per block."""
    return _split(plan)[0]


def calibration_for(plan: Plan, calibration: Calibration | None) -> Calibration:
    """``calibration``, else the one the Plan carries; a calibrated layer needs text."""
    cal = plan.calibration if calibration is None else calibration
    if cal is None or not cal.files:
        first = next(e for e in plan.quantized if e.algorithm != "rtn")
        where = "default" if first.rule is None else f"rule {first.rule}"
        raise ConfigError(
            f"{plan.config_source}: {where} sets algorithm '{first.algorithm}' for "
            f"'{first.path}', which needs calibration text: add a 'calibration:' section "
            "with 'files' (or pass --calibration FILE). "
            f"Received: calibration={None if cal is None else list(cal.files)}"
        )
    return cal


def _split(plan: Plan):
    """Calibrated layers by block; the rest (quantized directly); notes on fallbacks."""
    by_block: dict[int, dict[str, list[PlanEntry]]] = {}
    direct: dict[str, list[PlanEntry]] = {}
    notes = []
    for attr, entries in plan.layers().items():
        first = entries[0]
        calibrated = first.algorithm != "rtn"
        if calibrated and first.block is not None and _calibratable(first):
            by_block.setdefault(first.block, {})[attr] = entries
            continue
        direct[attr] = entries
        if calibrated:
            why = "outside the transformer blocks" if first.block is None else f"to {first.layer}"
            notes.append(
                f"{first.path} ({first.role}): {first.algorithm} is not applied {why}; "
                "quantized by round-to-nearest"
            )
    return by_block, direct, notes


def _calibratable(entry: PlanEntry) -> bool:
    return entry.layer in CALIBRATED_LAYERS or entry.is_bank


def _block_list(backbone, plan: Plan) -> list:
    attr = next(e.attr for e in plan.entries if e.block is not None).split(".")[0]
    return list(getattr(backbone, attr))


def _quantize_rtn(backbone, attr: str, entries: list[PlanEntry], on_layer) -> None:
    layer = layer_at(backbone, attr)
    if getattr(layer, "_is_quantized", False):
        return  # quantized while streaming
    layer.quantize(entries[0].mode)
    if on_layer is not None:
        on_layer(entries)


class _BlockStep:
    """One block's planned layers: statistics on the float block, then quantize."""

    def __init__(self, backbone, plan, index: int, planned: dict, router: str | None, on_layer):
        from hubquant.calibrate import algorithms

        self.backbone, self.index, self.planned, self.on_layer = backbone, index, planned, on_layer
        self.readers: dict[str, list[PlanEntry]] = {}
        for e in plan.entries:
            if e.block == index and e.input_norm is not None:
                self.readers.setdefault(e.input_norm, []).append(e)
        self.folded: dict[str, str] = {}  # layer attr -> the norm or projection holding s
        self.layers = {attr: layer_at(backbone, attr) for attr in planned}
        calibrated = {a: e for a, e in planned.items() if e[0].algorithm != "rtn"}
        self.banks = {
            a: experts.new_bank(backbone, self.layers[a], router, e)
            for a, e in calibrated.items()
            if e[0].is_bank
        }
        self.stats = {
            a: algorithms.new_stats(e[0]) for a, e in calibrated.items() if a not in self.banks
        }

    def run(self, block, inputs: blocks_mod.BlockInputs) -> list[str]:
        from hubquant.calibrate import algorithms

        with (
            blocks_mod.recording({a: self.layers[a] for a in self.stats}, self.stats),
            experts.recording(list(self.banks.values())),
        ):
            inputs.feed(block, self.index)
        notes = self._fold_into_projections() + self._fold()
        for attr, entries in self.planned.items():
            if attr in self.banks:
                notes += experts.quantize_bank(self.banks.pop(attr))
            elif attr in self.folded:
                pass  # quantized as its scale was folded
            elif attr in self.stats:
                algorithms.quantize_layer(self.layers[attr], entries[0], self.stats.pop(attr))
            else:
                self.layers[attr].quantize(entries[0].mode)
            if self.on_layer is not None:
                self.on_layer(entries)
        return notes

    def _fold_into_projections(self) -> list[str]:
        """AWQ layers whose input channels are another planned layer's output
        channels (``input_from``): that layer's rows are divided by ``s`` while
        it is still float, before anything else in the block is quantized."""
        notes = []
        for attr, entries in self.planned.items():
            e, source = entries[0], entries[0].input_from
            if e.algorithm != "awq" or source not in self.planned or attr not in self.stats:
                continue
            divide = functools.partial(fold.divide_rows, self.layers[source])
            why = self._fold_group([attr], source, divide)
            if why:
                notes.append(f"AWQ scale of {e.path} stays in the layer: {why}")
        return notes

    def _fold(self) -> list[str]:
        """AWQ groups whose scale folds into the norm they read (``input_norm``)."""
        notes = []
        for norm_attr, attrs in fold.fold_groups(self.readers, self.stats).items():
            norm = layer_at(self.backbone, norm_attr)
            form = fold.norm_form(norm, norm.path)
            if isinstance(form, str):
                notes.append(f"AWQ scales stay in the layers reading {norm.path}: {form}")
                continue
            self._fold_group(attrs, norm_attr, form.divide_by)
        return notes

    def _fold_group(self, attrs: list[str], holder: str, divide) -> str:
        """Search one scale ``s`` for ``attrs`` (layers reading one input), let
        ``divide(s)`` move ``1 / s`` into ``holder`` (it returns why it could
        not, or ""), then quantize each layer's ``W * s``."""
        from hubquant.calibrate.awq import awq_group_scale, awq_quantize

        entries = [self.planned[a][0] for a in attrs]
        stat = self.stats[attrs[0]]
        magnitude, gram = stat.magnitude(), stat.gram()
        ws = [_kernel_matrix(self.layers[a]) for a in attrs]
        grid = (entries[0].algorithm_options or {}).get("grid", default("awq", "grid"))
        layers = [(w, e.mode, e.group_size, e.symmetric) for w, e in zip(ws, entries, strict=True)]
        s = awq_group_scale(layers, magnitude, gram, grid)
        why = divide(s)
        if why:
            return why
        for attr, w, e in zip(attrs, ws, entries, strict=True):
            clip = (e.algorithm_options or {}).get("clip", default("awq", "clip"))
            matrix, _ = awq_quantize(
                w, magnitude, gram, e.mode, e.group_size, e.symmetric, clip=clip, scale=s
            )
            self.layers[attr].quantize(e.mode, values={"kernel": matrix})
            del self.stats[attr]
            self.folded[attr] = holder
        return ""


def _kernel_matrix(layer) -> np.ndarray:
    fm = layer._float_matrices()["kernel"]
    return fm.to_matrix(getattr(layer, fm.attr))
