"""Import of compressed-tensors ``pack-quantized`` checkpoints, without floats.

A Hugging Face folder whose ``config.json`` has a ``quantization_config`` with
``quant_method: compressed-tensors`` becomes a quantized KerasHub task model:

1. KerasHub's own converter (``keras_hub.src.utils.transformers``) turns the
   config into a backbone and a task (with a tokenizer when the folder has
   one), and ports the float tensors (norms, embeddings, biases, float
   Linears).
2. The Plan comes from the family's recipe: each recipe role with an ``hf``
   name is matched against the ``config_groups`` targets and ``ignore`` as
   compressed-tensors matches them.
3. ``surgery.build_skeleton`` turns the planned layers into quantized ones and
   each module's ``weight_packed`` / ``weight_scale`` / ``weight_zero_point``
   are unpacked straight into hubquant's codes, scales and zero points.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from hubquant.errors import ArtefactError
from hubquant.io import ct_config
from hubquant.io.st_reader import TensorFiles
from hubquant.plan import Plan, PlanEntry
from hubquant.quantizers import num_groups, pack_int4

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_TABLES = ("embeddings", "reverse_embeddings")  # float matrices a skeleton re-creates


def is_hf_folder(folder: Path) -> bool:
    """A Hugging Face folder quantized by compressed-tensors."""
    try:
        qc = _read_config(folder).get("quantization_config") if _has_config(folder) else None
    except ArtefactError:
        return False
    return isinstance(qc, dict) and qc.get("quant_method") == ct_config.METHOD


def load_hf(folder: Path):
    """The quantized KerasHub task model held by a compressed-tensors folder."""
    from hubquant import registered, surgery

    config = _read_config(folder)
    source = f"'{folder / 'config.json'}'"
    quant = ct_config.parse(config["quantization_config"], source)
    loader, task = _float_task(folder, config)
    backbone = task.backbone
    with TensorFiles(folder) as files:
        plan = _plan(backbone, quant, files, folder, config)
        skipped = {e.hf for e in plan.quantized}
        loader.converter.convert_weights(backbone, _FloatLoader(files, skipped), config)
        _build_skeleton_keeping_floats(backbone, plan)
        for entry in plan.quantized:
            _assign(surgery.layer_at(backbone, entry.attr), entry, files, folder)
    registered.mark_quantized(task, plan)
    return task


def _build_skeleton_keeping_floats(backbone, plan: Plan) -> None:
    """``build_skeleton``, keeping the float matrices the Plan leaves alone in a
    planned layer (a token table whose untied LM head is quantized)."""
    from hubquant import surgery

    kept = {}
    for attr in plan.layers():
        layer = surgery.layer_at(backbone, attr)
        kept[attr] = {v.name: v.value for v in layer.weights if v.name in _TABLES}
    surgery.build_skeleton(backbone, plan)
    for attr, values in kept.items():
        for var in surgery.layer_at(backbone, attr)._own_float_variables():
            if var.name in values and tuple(values[var.name].shape) == tuple(var.shape):
                var.assign(values[var.name])


def _has_config(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file()


def _read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ArtefactError(f"'{folder / 'config.json'}' cannot be read: {e}") from None
    return config if isinstance(config, dict) else {}


def _float_task(folder: Path, config: dict):
    """KerasHub's loader for the folder, and the float task it builds."""
    from keras_hub.models import CausalLM

    from hubquant.keras_internals import TransformersPresetLoader, find_subclass

    try:
        loader = TransformersPresetLoader(str(folder), config)
        backbone_cls = loader.check_backbone_class()
        task_cls = find_subclass(str(folder), CausalLM, backbone_cls)
        backbone = loader.load_backbone(backbone_cls, load_weights=False)
    except (ValueError, KeyError) as e:
        raise ArtefactError(
            f"'{folder}': KerasHub cannot build model_type "
            f"{config.get('model_type')!r}: {type(e).__name__}: {e}"
        ) from None
    preprocessor = None
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        try:
            preprocessor = loader.load_preprocessor(task_cls.preprocessor_cls)
        except (ValueError, KeyError, OSError) as e:
            raise ArtefactError(
                f"'{folder}': KerasHub cannot read its tokenizer: {type(e).__name__}: {e}"
            ) from None
    return loader, task_cls(backbone=backbone, preprocessor=preprocessor)


def _plan(backbone, quant: ct_config.QuantizationConfig, files, folder, config) -> Plan:
    """The recipe's Plan, each Linear set as the checkpoint quantized it."""
    from hubquant.config import parse_config
    from hubquant.planning import plan_for

    none = parse_config("default: {mode: none}\n", f"compressed-tensors ({folder})")
    plan = plan_for(backbone, none)
    entries = tuple(_entry(e, quant, files, folder) for e in plan.entries)
    _check_all_mapped(entries, files, folder, plan.recipe)
    return replace(
        plan,
        entries=entries,
        config_text=json.dumps(config["quantization_config"], indent=1, sort_keys=True),
    )


def _entry(entry: PlanEntry, quant, files, folder) -> PlanEntry:
    linear = entry.hf is not None and entry.matrix in ("kernel", "reverse")
    scheme = quant.scheme_for(entry.hf) if linear else None
    if scheme is None:
        return entry
    where = f"'{folder}': module {entry.hf}"
    if scheme.problem:
        raise ArtefactError(
            f"{where} uses {scheme.problem} (config group '{scheme.group}'); hubquant "
            "imports weight-only int4/int8 pack-quantized weights only."
        )
    if f"{entry.hf}.weight_g_idx" in files:
        raise ArtefactError(f"{where} has activation-ordered groups (weight_g_idx).")
    k = entry.shape[1]
    group_size = scheme.group_size if scheme.strategy == "group" else -1
    if scheme.bits == 8 and num_groups(k, group_size) != 1:
        raise ArtefactError(
            f"{where} uses int8 in groups of {group_size}; hubquant's int8 has one scale "
            "per output channel."
        )
    mode = "int4" if scheme.bits == 4 else "int8"
    symmetric = scheme.symmetric or mode == "int8"
    return replace(entry, mode=mode, group_size=group_size, symmetric=symmetric, rule=None)


def _check_all_mapped(entries, files, folder, recipe: str) -> None:
    """Every packed module in the files is one the Plan quantizes."""
    planned = {e.hf for e in entries if e.mode != "none"}
    for name in files.keys():
        module = name.removesuffix(".weight_packed")
        if module != name and module not in planned:
            raise ArtefactError(
                f"'{folder}': module {module} is quantized in the checkpoint, but recipe "
                f"'{recipe}' has no quantized role for it (is it targeted by the config?)."
            )


class _FloatLoader:
    """KerasHub's converters read tensors through ``port_weight``: this one
    reads from ``files`` and leaves the quantized modules alone. Converters
    name some tensors without the ``model.`` prefix."""

    def __init__(self, files: TensorFiles, skipped: set[str]):
        self.files = files
        self.skipped = skipped

    def get_tensor(self, hf_weight_key: str) -> np.ndarray:
        for key in (hf_weight_key, f"model.{hf_weight_key}"):
            if key in self.files:
                return self.files.get(key)
        return self.files.get(hf_weight_key)  # names the missing tensor

    def port_weight(self, keras_variable, hf_weight_key: str, hook_fn=None) -> None:
        module = hf_weight_key.removesuffix(".weight")
        if {module, f"model.{module}"} & self.skipped:
            return
        tensor = self.get_tensor(hf_weight_key)
        if hook_fn:
            tensor = hook_fn(tensor.view(_KeepFloatDtype), list(keras_variable.shape))
        keras_variable.assign(np.asarray(tensor).astype(keras_variable.dtype))


class _KeepFloatDtype(np.ndarray):
    """An array whose float-to-float ``astype`` is a no-op: KerasHub's Mistral
    converter casts every tensor to float16 in its hooks; the variable's own
    dtype (at ``assign``) should decide, as it does for the other families."""

    def astype(self, dtype, *args, **kwargs):
        if self.dtype.kind == "f" or "bfloat16" in str(self.dtype):
            if np.dtype(dtype).kind == "f":
                return self
        return super().astype(dtype, *args, **kwargs)


def _assign(layer, entry: PlanEntry, files: TensorFiles, folder: Path) -> None:
    """Unpack one module's tensors into the layer's codes, scale and zero."""
    values = _matrix_values(entry, files, folder)
    for suffix, value in values.items():
        var = getattr(layer, f"{entry.matrix}_{suffix}")
        if tuple(var.shape) != value.shape:
            raise ArtefactError(
                f"'{folder}': module {entry.hf}: {suffix} has shape {value.shape}; the "
                f"model expects {tuple(var.shape)}."
            )
        var.assign(value)


def _matrix_values(entry: PlanEntry, files: TensorFiles, folder: Path) -> dict:
    n, k = entry.shape
    bits = 4 if entry.mode == "int4" else 8
    name = entry.hf
    shape = files.get(f"{name}.weight_shape") if f"{name}.weight_shape" in files else None
    if shape is not None and tuple(int(d) for d in shape) != (n, k):
        raise ArtefactError(
            f"'{folder}': module {name} has weight_shape {tuple(shape.tolist())}; the model "
            f"expects {(n, k)}."
        )
    codes = _unpacked(files.get(f"{name}.weight_packed"), bits, (n, k), 1, name, folder)
    groups = num_groups(k, entry.group_size)
    scale = _per_group(files.get(f"{name}.weight_scale"), (n, groups), name, "weight_scale")
    if bits == 8:
        return {"codes": codes, "scale": scale.reshape(n).astype(np.float32)}
    values = {"codes": pack_int4(codes), "scale": scale.astype(np.float32)}
    if not entry.symmetric:
        zero = files.get(f"{name}.weight_zero_point")
        # int32: packed along the output axis (compressed-tensors since 0.9), as
        # [ceil(N / 8), G] or zero-padded to [N, G] rows (hubquant's export, which
        # transformers 5.24 loads); compressed-tensors decodes both from the first
        # rows. int8 [N, G]: unpacked (older writers).
        if zero.dtype == np.int32 and zero.shape == (n, groups):
            zero = zero[: -(-n // (32 // bits))]
        if zero.dtype == np.int32 or zero.shape != (n, groups):
            zero = _unpacked(zero, bits, (n, groups), 0, name, folder)
        values["zero"] = zero.astype(np.int8)
    return values


def _per_group(value: np.ndarray, shape: tuple, name: str, what: str) -> np.ndarray:
    """A ``[N, G]`` tensor; a per-tensor value is broadcast to every channel."""
    if value.size == 1:
        return np.broadcast_to(value.reshape(1, 1), shape).copy()
    if value.shape != shape:
        raise ArtefactError(f"module {name}: {what} has shape {value.shape}; expected {shape}.")
    return value


def _unpacked(words, bits: int, shape: tuple, axis: int, name: str, folder) -> np.ndarray:
    """Signed codes from int32 words packed LSB first along ``axis`` (offset 2^(bits-1))."""
    per_word = 32 // bits
    length = shape[axis]
    expected = list(shape)
    expected[axis] = -(-length // per_word)
    if words.dtype != np.int32 or list(words.shape) != expected:
        raise ArtefactError(
            f"'{folder}': module {name}: packed tensor is {words.dtype}{list(words.shape)}; "
            f"expected int32{expected}."
        )
    w = np.moveaxis(words, axis, -1).view(np.uint32)
    shifts = np.arange(per_word, dtype=np.uint32) * np.uint32(bits)
    v = (w[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    v = v.reshape(*w.shape[:-1], -1)[..., :length].astype(np.int16) - (1 << (bits - 1))
    return np.moveaxis(v.astype(np.int8), -1, axis)
