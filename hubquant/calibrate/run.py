"""The entry point: quantize a Plan's calibrated layers block by block.

Layers outside the transformer blocks (token table, LM head) and expert banks
are quantized by round-to-nearest, and the Plan returned says so
(``algorithm: rtn``) with a note for each.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hubquant.calibrate import blocks as blocks_mod
from hubquant.calibrate.calibration import (
    Calibration,
    calibration_tokens,
    require_calibration,
)
from hubquant.plan import Plan, PlanEntry
from hubquant.surgery import layer_at

CALIBRATED_LAYERS = ("QuantDense", "QuantEinsumDense")


def needs_calibration(plan: Plan) -> bool:
    return any(e.algorithm != "rtn" for e in plan.quantized)


def calibrate_plan(model, plan: Plan, calibration=None, on_layer=None):
    """Quantize every planned layer of ``model`` (already swapped); return the
    Plan as applied (fallbacks to round-to-nearest recorded) and notes.

    ``calibration``: a ``Calibration`` (default: the config's section), or the
    token ids themselves (int ``[samples, seq_len]``).
    """
    from hubquant.api import backbone_of

    backbone = backbone_of(model)
    if isinstance(calibration, np.ndarray):
        tokens = calibration.astype("int32")
    else:
        tokens = calibration_tokens(model, _calibration_for(plan, calibration))
    by_block, direct, notes = _split(plan)
    for attr, entries in direct.items():
        _quantize_rtn(backbone, attr, entries, on_layer)
    if by_block:
        _run_blocks(backbone, plan, by_block, tokens, on_layer)
    fallback = {(e.attr, e.matrix) for es in direct.values() for e in es if e.algorithm != "rtn"}
    entries = tuple(
        dataclasses.replace(e, algorithm="rtn", algorithm_options=None)
        if (e.attr, e.matrix) in fallback
        else e
        for e in plan.entries
    )
    return dataclasses.replace(plan, entries=entries), notes


def _run_blocks(backbone, plan: Plan, by_block: dict, tokens, on_layer) -> None:
    """Block by block: statistics on the float block, quantize, pass outputs on."""
    block_list = _block_list(backbone, plan)
    inputs = blocks_mod.block_inputs(backbone, block_list, tokens)
    last = max(by_block)
    for index, block in enumerate(block_list[: last + 1]):
        planned = by_block.get(index, {})
        if planned:
            _quantize_block(backbone, block, index, planned, inputs, on_layer)
        if index < last:
            inputs.run(block, index)


def _calibration_for(plan: Plan, calibration: Calibration | None) -> Calibration:
    from hubquant.config import parse_config

    config = parse_config(plan.config_text, plan.config_source)
    if calibration is not None:
        config = dataclasses.replace(config, calibration=calibration)
    require_calibration(config)
    return config.calibration


def _split(plan: Plan):
    """Calibrated layers by block; the rest (quantized directly); notes on fallbacks."""
    by_block: dict[int, dict[str, list[PlanEntry]]] = {}
    direct: dict[str, list[PlanEntry]] = {}
    notes = []
    for attr, entries in plan.layers().items():
        first = entries[0]
        calibrated = first.algorithm != "rtn"
        if calibrated and first.block is not None and first.layer in CALIBRATED_LAYERS:
            by_block.setdefault(first.block, {})[attr] = entries
            continue
        direct[attr] = entries
        if calibrated:
            why = "outside the transformer blocks" if first.block is None else "to expert banks"
            notes.append(
                f"{first.path} ({first.role}): {first.algorithm} is not applied {why}; "
                "quantized by round-to-nearest"
            )
    return by_block, direct, notes


def _block_list(backbone, plan: Plan) -> list:
    attr = next(e.attr for e in plan.entries if e.block is not None).split(".")[0]
    return list(getattr(backbone, attr))


def _quantize_rtn(backbone, attr: str, entries: list[PlanEntry], on_layer) -> None:
    layer_at(backbone, attr).quantize(entries[0].mode)
    if on_layer is not None:
        on_layer(entries)


def _quantize_block(backbone, block, index, planned, inputs, on_layer) -> None:
    """Collect statistics on the float block, then quantize its planned layers."""
    from hubquant.calibrate import algorithms

    layers = {attr: layer_at(backbone, attr) for attr in planned}
    calibrated = {a: e for a, e in planned.items() if e[0].algorithm != "rtn"}
    stats = {attr: algorithms.new_stats(entries[0]) for attr, entries in calibrated.items()}
    with blocks_mod.recording({a: layers[a] for a in stats}, stats):
        inputs.feed(block, index)
    for attr, entries in planned.items():
        if attr in stats:
            algorithms.quantize_layer(layers[attr], entries[0], stats.pop(attr))
        else:
            layers[attr].quantize(entries[0].mode)
        if on_layer is not None:
            on_layer(entries)
