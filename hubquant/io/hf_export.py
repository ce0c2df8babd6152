"""Export for Hugging Face transformers, in the compressed-tensors format.

The folder holds ``config.json`` in the family's Hugging Face layout (from
KerasHub's own exporter) with a ``quantization_config`` of ``quant_method:
compressed-tensors``, ``format: pack-quantized``; tokenizer files; and
``model.safetensors``. Each quantized Linear ``<m>`` is written as
``<m>.weight_packed`` (int32, codes offset by 2^(bits-1), packed least
significant bits first along the input axis), ``<m>.weight_scale``
(multipliers, the model's dtype), ``<m>.weight_shape`` (int64 ``[out, in]``)
and, when asymmetric, ``<m>.weight_zero_point`` (packed along the output axis,
then zero-padded to ``[out, groups]`` rows: see ``_zero_point``).
hubquant's ``[N, K]`` codes already are Hugging Face's ``[out, in]``.

A quantized token table is written dequantized (transformers' embeddings stay
float); a tied LM head follows it.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import keras
import numpy as np
from keras_hub.models import Task

from hubquant.errors import HubquantError
from hubquant.io.st_writer import spec_of, write_safetensors
from hubquant.keras_internals import hf_exporter
from hubquant.layers.lora import lora_state
from hubquant.paths import backbone_of
from hubquant.plan import PlanEntry
from hubquant.quantizers import unpack_int4


def check_no_adapters(backbone) -> None:
    if lora_state(backbone):
        raise HubquantError(
            "the model has LoRA adapters, which a compressed-tensors folder cannot hold: "
            "fold them in first with hubquant.merge_lora(model)."
        )


def export_hf(model, folder: Path) -> None:
    """Write a folder that ``AutoModelForCausalLM.from_pretrained`` loads."""
    exporter = hf_exporter()
    backbone = backbone_of(model)
    family = type(backbone)._hubquant_base.__name__
    get_config, get_weights = _mapping(exporter, family)
    plan = backbone.hubquant_plan
    check_no_adapters(backbone)
    check_exportable(plan, family)
    linears = [e for e in plan.quantized if _is_linear(e)]
    config = get_config(backbone)
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    config["quantization_config"] = quantization_config(plan, linears)
    config["torch_dtype"] = plan.dtype.replace("mixed_", "")
    # A quantized untied LM head has no float variable left: it is added below.
    float_head = isinstance(model, Task) and all(e.matrix != "reverse" for e in linears)
    with _float_views(backbone, plan):
        weights = get_weights(backbone, include_lm_head=float_head)
        tensors = {name: _numpy(value) for name, value in weights.items()}
    for entry in linears:
        tensors.pop(f"{entry.hf}.weight", None)
        tensors.update(_packed_tensors(backbone, entry, _dtype_of(tensors)))
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    specs = {name: (*spec_of(t), (lambda t=t: t)) for name, t in tensors.items()}
    write_safetensors(folder / "model.safetensors", specs, {"format": "pt"})
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is not None:
        from hubquant.io.tokenizers import as_keras_hub_class

        with as_keras_hub_class(tokenizer):
            exporter.export_tokenizer(tokenizer, str(folder))


def _mapping(exporter, family: str) -> tuple:
    """(config function, weights function): hubquant's own, else KerasHub's."""
    from hubquant.io.hf_families import CONFIG_FIELDS, FAMILIES

    if family in FAMILIES:
        return FAMILIES[family]
    if family in exporter.MODEL_CONFIGS:
        keras_hub_config = exporter.MODEL_CONFIGS[family]
        fields = CONFIG_FIELDS.get(family, lambda backbone: {})

        def get_config(backbone):
            config = keras_hub_config(backbone)
            config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            return {**config, **fields(backbone)}

        return get_config, exporter.MODEL_EXPORTERS[family]
    supported = ", ".join(sorted({*FAMILIES, *exporter.MODEL_CONFIGS}))
    raise HubquantError(
        f"no Hugging Face export mapping for {family}; families with one: {supported}."
    )


@contextlib.contextmanager
def _float_views(backbone, plan):
    """Let KerasHub's float exporter read quantized layers (dequantized).

    Its weight maps read ``layer.weights[0]`` or ``layer.kernel``; for the
    duration of the export each quantized layer shows its float matrices
    there. The packed tensors then replace the projections' float weights.
    """
    from hubquant.surgery import layer_at

    layers = [layer_at(backbone, attr) for attr in plan.layers()]
    originals = [type(layer) for layer in layers]
    try:
        for layer, cls in zip(layers, originals, strict=True):
            layer.__class__ = _view_class(cls)
        yield
    finally:
        for layer, cls in zip(layers, originals, strict=True):
            layer.__class__ = cls


@functools.cache
def _view_class(cls: type) -> type:
    return type(cls.__name__, (cls,), {"weights": property(lambda self: self.float_weights())})


def quantization_config(plan, linears: list[PlanEntry]) -> dict:
    """compressed-tensors' ``quantization_config``: one group per scheme."""
    groups: dict[tuple, list[str]] = {}
    for entry in linears:
        groups.setdefault(_scheme_key(entry), []).append(entry.hf)
    config_groups = {
        f"group_{i}": {
            "targets": sorted(targets),
            "weights": _weights_args(*key),
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
        for i, (key, targets) in enumerate(sorted(groups.items()))
    }
    quantized = {e.hf for e in linears}
    ignore = sorted({e.hf for e in plan.entries if _is_linear(e) and e.hf not in quantized})
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "sparsity_config": {},
    }


def check_exportable(plan, family: str | None = None, applied: bool = True) -> None:
    """Refuse a Plan that compressed-tensors cannot express. ``applied``
    False: the Plan before quantizing, where an AWQ layer whose recipe role
    names an ``input_norm`` or ``input_from`` may still fold its scale away
    (checked again on the applied Plan at export)."""
    _mapping(hf_exporter(), family or plan.backbone)
    for entry in plan.quantized:
        if _is_linear(entry):
            _check_exportable(entry, applied)


def _is_linear(entry: PlanEntry) -> bool:
    """Projections and an untied LM head export as packed Linears."""
    return entry.hf is not None and (entry.matrix in ("kernel", "reverse"))


def _check_exportable(entry: PlanEntry, applied: bool) -> None:
    k = entry.shape[1]
    may_fold = not applied and (entry.input_norm or entry.input_from)
    if entry.holds_input_scale and not may_fold:
        raise HubquantError(
            f"layer '{entry.path}' ({entry.role}): quantized with AWQ, it holds a per-input-"
            "channel scale (kernel_input_scale) that compressed-tensors has no place for; "
            "export needs algorithm rtn or gptq for this layer. Received: algorithm='awq'"
        )
    if entry.mode == "int4" and _group(entry) != -1 and k % entry.group_size:
        raise HubquantError(
            f"layer '{entry.path}' ({entry.role}): compressed-tensors needs the input size "
            f"{k} to be a multiple of group_size {entry.group_size}; quantize it with a "
            "group size that divides it (or per channel) to export it."
        )


def _scheme_key(entry: PlanEntry) -> tuple:
    return (4 if entry.mode == "int4" else 8), entry.symmetric, _group(entry)


def _group(entry: PlanEntry) -> int:
    """The group size as compressed-tensors sees it: -1 (per channel) for one group."""
    one_group = entry.mode != "int4" or entry.group_size == -1 or entry.group_size >= entry.shape[1]
    return -1 if one_group else entry.group_size


def _weights_args(bits: int, symmetric: bool, group: int) -> dict:
    return {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": "channel" if group == -1 else "group",
        "group_size": None if group == -1 else group,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
        "block_structure": None,
    }


def _packed_tensors(backbone, entry: PlanEntry, dtype) -> dict[str, np.ndarray]:
    from hubquant.surgery import layer_at

    layer = layer_at(backbone, entry.attr)
    n, k = entry.shape
    codes = keras.ops.convert_to_numpy(getattr(layer, f"{entry.matrix}_codes"))
    scale = keras.ops.convert_to_numpy(getattr(layer, f"{entry.matrix}_scale"))
    bits = 4 if entry.mode == "int4" else 8
    if bits == 4:
        codes = unpack_int4(codes, k)
    scale = scale.reshape(n, -1).astype(dtype)
    out = {
        f"{entry.hf}.weight_packed": pack_int32(codes, bits, axis=1),
        f"{entry.hf}.weight_scale": scale,
        f"{entry.hf}.weight_shape": np.array([n, k], np.int64),
    }
    if not entry.symmetric and entry.mode == "int4":
        zero = keras.ops.convert_to_numpy(getattr(layer, f"{entry.matrix}_zero"))
        out[f"{entry.hf}.weight_zero_point"] = _zero_point(zero, bits)
    return out


def _zero_point(zero: np.ndarray, bits: int) -> np.ndarray:
    """``[N, G]`` zero points packed along the output axis into int32, as
    compressed-tensors packs them, zero-padded back to ``[N, G]`` rows.

    transformers (5.24 with compressed-tensors 0.20) builds the module on the
    meta device, where compressed-tensors leaves ``weight_zero_point`` unpacked
    (``[N, G]``), so it refuses the packed ``[ceil(N / 8), G]`` tensor; its
    decompression still reads an int32 zero point as packed along axis 0 and
    uses the first ``ceil(N / 8)`` rows only. hubquant's importer reads both.
    """
    packed = pack_int32(zero, bits, axis=0)
    padded = np.zeros(zero.shape, np.int32)
    padded[: packed.shape[0]] = packed
    return padded


def pack_int32(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Signed ``bits``-bit values, offset to unsigned, packed LSB first into int32."""
    per_word = 32 // bits
    v = (values.astype(np.int32) + (1 << (bits - 1))).astype(np.uint32)
    v = np.moveaxis(v, axis, -1)
    pad = -v.shape[-1] % per_word
    v = np.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, pad)])
    v = v.reshape(*v.shape[:-1], -1, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits).astype(np.uint32)
    words = np.bitwise_or.reduce(v << shifts, axis=-1)
    return np.moveaxis(words.view(np.int32), -1, axis)


def _numpy(value) -> np.ndarray:
    return np.ascontiguousarray(keras.ops.convert_to_numpy(value))


def _dtype_of(tensors: dict) -> np.dtype:
    floats = [
        t.dtype for t in tensors.values() if t.dtype.kind == "f" or "bfloat16" in str(t.dtype)
    ]
    return floats[0] if floats else np.dtype(np.float32)
