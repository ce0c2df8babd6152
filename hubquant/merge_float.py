"""Merging adapters from the float weights: each adapted layer quantized
afresh from ``W + A B * alpha / rank`` by its own rule, as quantizing the
merged float model with the same config would.

``W`` is read from the float preset the model was quantized from (a KerasHub
preset, a Hugging Face folder or the built-in default), one layer at a time:
the float model is built unallocated and only the adapted matrices are read
(``stream.read_floats_later``). Round-to-nearest layers get exactly a fresh
quantization. Calibrated layers (GPTQ, AWQ with the scale held in the layer,
imatrix) are quantized by their algorithm on their inputs, block by block,
each block seeing the blocks before it merged, as a fresh apply sees the
blocks before it quantized. An AWQ layer whose scale was folded into a norm
shares that scale with layers the adapter does not touch, so it keeps its grid
and is merged there (``merge_adapter``).
"""

from __future__ import annotations

import numpy as np

from hubquant import stream
from hubquant.calibrate import blocks, fold
from hubquant.calibrate.algorithms import new_stats, quantize_matrix
from hubquant.calibrate.awq import awq_quantize
from hubquant.calibrate.run import tokens_for
from hubquant.errors import HubquantError
from hubquant.layers.sharding import to_host
from hubquant.paths import backbone_of, layer_at, walk
from hubquant.plan import Plan, PlanEntry
from hubquant.quantizers import quantize
from hubquant.synthetic import DEFAULT_PRESET, default_preset
from hubquant.tune.streamed import Streamed


def merge_from_float(model, plan: Plan, layers: dict, source: str, calibration=None) -> None:
    """Merge the adapted ``layers`` (attr -> entry) from ``source``'s float kernels."""
    backbone = backbone_of(model)
    floats = _open(source, plan, backbone, layers)
    frames = {a: awq_scales(plan, floats, backbone, a) for a in layers}  # before any change

    def requantize(attr: str, entry: PlanEntry, stats) -> None:
        rows, columns = frames.pop(attr)
        w = floats.to_matrix(entry, floats.read(entry)) / rows[:, None] * columns[None, :]
        _requantize(layer_at(backbone, attr), entry, w, stats)

    calibrated = {a: e for a, e in layers.items() if e.algorithm != "rtn"}
    for attr in layers.keys() - calibrated.keys():
        requantize(attr, layers[attr], None)
    if calibrated:
        tokens = _tokens(model, plan, calibration, source)
        for attr, stats in blocks.each_with_stats(backbone, plan, calibrated, tokens, new_stats):
            requantize(attr, calibrated[attr], stats)


def _requantize(layer, entry: PlanEntry, w: np.ndarray, stats) -> None:
    """Quantize ``w`` (the float kernel as the layer sees it, ``awq_scales``)
    plus the adapter by the layer's rule, and hold it in place of the codes."""
    w = w + layer.adapter_matrix()
    if stats is None:
        args = (entry.mode, entry.group_size, entry.symmetric, entry.clip)
        matrix, input_scale = quantize(w, *args), None
    elif entry.folded_into is not None:  # AWQ's rule, its scale already in ``w``
        ones = np.ones(w.shape[1], np.float32)
        options = {**(entry.algorithm_options or {}), "scale": ones}
        magnitude, gram = stats.magnitude(), stats.gram()
        args = (entry.mode, entry.group_size, entry.symmetric)
        matrix, input_scale = awq_quantize(w, magnitude, gram, *args, **options)[0], None
    else:
        matrix, input_scale = quantize_matrix(w, entry, stats)
    layer.merge_codes(matrix, input_scale)


def awq_scales(plan: Plan, floats: Streamed, backbone, attr: str) -> tuple:
    """``(rows, columns)``: layer ``attr``'s kernel in the quantized model is
    ``W / rows[:, None] * columns`` of the float ``W``. Where AWQ folded a
    scale ``s`` into what feeds the layer, its inputs are ``x / s`` (columns
    ``s``); where the layer holds another's scale, its output rows were
    divided by it. Ones elsewhere."""
    rows = np.ones(plan.layers()[attr][0].shape[0], np.float32)
    if _folded_into(plan, attr) is not None:
        rows = _projection_scale(plan, floats, backbone, attr)
    return rows, _column_scale(plan, floats, backbone, attr)


def _column_scale(plan: Plan, floats: Streamed, backbone, attr: str) -> np.ndarray:
    entry = plan.layers()[attr][0]
    holder = entry.folded_into
    if holder in plan.layers():
        return _projection_scale(plan, floats, backbone, holder)
    if holder is not None:
        return _norm_scale(floats, backbone, holder)
    return np.ones(entry.shape[1], np.float32)


def _folded_into(plan: Plan, holder: str) -> str | None:
    """The projection whose AWQ scale ``holder``'s output rows were divided by."""
    folded = [e.attr for e in plan.entries if e.folded_into == holder]
    if len(folded) > 1:
        raise HubquantError(
            f"merge_lora: the rows of '{holder}' hold the AWQ scales of {sorted(folded)}; "
            "merging from the float weights needs one."
        )
    return folded[0] if folded else None


def _projection_scale(plan: Plan, floats: Streamed, backbone, holder: str) -> np.ndarray:
    """The AWQ scale ``s`` that divided ``holder``'s output rows before it was
    quantized: row by row, the float row against the quantized one (least
    squares over the row, so rounding noise averages out over K values)."""
    entry = plan.layers()[holder][0]
    w = floats.to_matrix(entry, floats.read(entry))
    w = w * _column_scale(plan, floats, backbone, holder)[None, :]  # its own inputs' scale
    q = np.asarray(layer_at(backbone, holder)._dequantized("kernel", "float32"))
    ratio = np.sum(w * q, axis=1) / np.maximum(np.sum(w * w, axis=1), 1e-30)  # 1 / s
    ok = ratio > 0  # a row rounded to zeros carries nothing: any scale will do
    return np.where(ok, 1.0 / np.where(ok, ratio, 1.0), 1.0).astype(np.float32)


def _norm_scale(floats: Streamed, backbone, norm_attr: str) -> np.ndarray:
    """The AWQ scale ``s`` folded into the norm at ``norm_attr``, as the
    quantized model holds it: ``(alpha + w) / (alpha + w')`` from the float
    norm's weight ``w`` and the folded one's ``w'`` (``fold.py``), so ``W * s``
    on the folded inputs computes exactly what ``W`` did on the float ones."""
    form = _form(layer_at(backbone_of(floats.model), norm_attr))
    folded = _form(layer_at(backbone, norm_attr))
    w = to_host(form.scale).astype(np.float32) + form.alpha
    folded = to_host(folded.scale).astype(np.float32) + form.alpha
    ok = np.abs(folded) > 0
    return np.where(ok, w / np.where(ok, folded, 1.0), 1.0).astype(np.float32)


def _form(norm) -> fold.NormForm:
    form = fold.norm_form(norm, norm.path)
    if isinstance(form, str):  # it was folded into, so it has the form
        raise HubquantError(f"merge_lora: cannot read the AWQ scale folded into {form}")
    return form


def _open(source: str, plan: Plan, backbone, layers: dict) -> Streamed:
    """``source``'s float model with every planned matrix left on disk, each
    adapted layer checked against the quantized one first."""
    if source == DEFAULT_PRESET:  # the built-in default, written as a preset folder
        source = default_preset()
    model, loader = stream.build_unloaded(source)
    float_backbone = backbone_of(model)
    for attr in layers:
        _check_fits(walk(float_backbone, attr), layer_at(backbone, attr), attr, source)
    pending = stream.Pending(model, plan, loader)
    return Streamed(stream.read_floats_later(pending), plan, str(loader.preset))


def _check_fits(float_layer, layer, attr: str, source: str) -> None:
    kernel = getattr(float_layer, "_kernel", None)
    want = tuple(layer.layout.shape)
    if kernel is None or tuple(kernel.shape) != want:
        got = "no such layer" if float_layer is None else f"{type(float_layer).__name__}"
        if kernel is not None:
            got += f" with a kernel of shape {tuple(kernel.shape)}"
        raise HubquantError(
            f"merge_lora: float_weights {source!r} are not this model's: layer '{attr}' has a "
            f"kernel of shape {want} here; there: {got}."
        )


def _tokens(model, plan: Plan, calibration, source: str) -> np.ndarray:
    """The calibration token ids: ``calibration``, else the Plan's; text the
    float model generates where it names no files (as ``apply`` does)."""
    given = stream.generated_unless_given(model, plan, source, calibration, print)
    return tokens_for(model, plan, given)
