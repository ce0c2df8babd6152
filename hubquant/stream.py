"""Quantize a preset while reading it: the float model is never held whole.

The task model is built from the preset's config with its variables left
unallocated (Keras' deferred initialisation), the Plan is resolved from their
shapes alone, and the weights are then read one layer at a time. A planned
layer turns each float matrix it reads straight into quantized variables
(large ones a block of rows at a time), so the float value lives only while
that layer loads. The result is bitwise equal to loading the whole float
model and quantizing it in memory: both read the same float values and run
the same quantizer over the same blocks of rows.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from hubquant import keras_internals as internals
from hubquant import registered, surgery
from hubquant._memory import release_free_memory
from hubquant.calibrate.run import (
    calibrate_plan,
    calibrated_by_block,
    calibration_for,
    needs_calibration,
)
from hubquant.errors import PresetError, first_line
from hubquant.layers.base import FloatMatrix
from hubquant.paths import backbone_of, layer_at
from hubquant.plan import Plan
from hubquant.planning import plan_for
from hubquant.quantizers import Columns, RowReader
from hubquant.synthetic import DEFAULT_PRESET, default_preset

# A float value at most this large is read whole; larger ones by rows.
WHOLE_BYTES = 256 << 20


@dataclass
class Pending:
    """A preset's model built without weights, its Plan resolved: nothing read yet."""

    model: object
    plan: Plan
    loader: object

    def quantize(self, on_layer=None, calibration=None):
        """``(model, plan)``: read the weights, quantizing as they arrive (see ``read``)."""
        return read(self, on_layer, calibration)


def stream_quantize(preset: str, config, recipe=None, strict: bool = False, on_layer=None):
    """``(model, plan)``: the preset quantized as it is read."""
    return read(prepare(preset, config, recipe, strict), on_layer)


def prepare(preset: str, config, recipe=None, strict: bool = False) -> Pending:
    """Build the model unallocated and resolve its Plan: nothing is read yet.

    ``preset``: a KerasHub preset (name or folder), a Hugging Face folder, or
    the built-in default's name (written as a preset folder, then read alike).
    """
    if preset == DEFAULT_PRESET:
        preset = default_preset()
    model, loader = build_unloaded(preset)
    plan = plan_for(model, config, recipe, strict=strict)
    return Pending(model, plan, loader)


def read(pending: Pending, on_layer=None, calibration=None):
    """``(model, plan)``: read the weights, quantizing planned layers as they arrive.

    The matrices of calibrated layers (GPTQ, AWQ, imatrix) stay on disk until
    calibration reaches their block (``calibrate_plan``'s ``before_block``); the
    Plan returned is the Plan as applied. ``calibration``: in place of the one
    the Plan carries (a ``Calibration``, or token ids ``[samples, seq_len]``).
    """
    model, plan = pending.model, pending.plan
    backbone = backbone_of(model)
    calibrated = needs_calibration(plan)
    if calibrated:  # generated text (no files) comes from the float model, read first
        calibration = _generated_first(pending, calibration, on_layer)
    later = {a for attrs in calibrated_by_block(plan).values() for a in attrs}
    surgery.compile_ahead(plan)
    _load(pending, on_layer, later)
    if calibrated:

        def before_block(attrs) -> None:
            for attr in attrs:
                read_now(layer_at(backbone, attr))

        plan = calibrate_plan(model, plan, calibration, on_layer, before_block)
    registered.mark_quantized(model, plan)
    return model, plan


def read_floats_later(pending: Pending):
    """The model with every planned layer swapped and its float matrices
    left on disk (``read_now`` reads a layer's; ``hubquant_later`` says
    where each lies); every other weight read. What ``tune`` walks."""
    _load(pending, None, set(pending.plan.layers()))
    return pending.model


def _load(pending: Pending, on_layer, later: set) -> None:
    """Swap the planned layers and read the weights: planned layers quantized
    as they arrive, those in ``later`` (layer paths) only told where theirs are."""
    model, plan = pending.model, pending.plan
    backbone = backbone_of(model)
    float_classes = {a: type(layer_at(backbone, a)).__name__ for a in plan.layers()}
    surgery.swap_layers(backbone, plan)
    if is_keras_preset(pending.loader):
        _stream_keras(model, pending.loader, plan, on_layer, float_classes, later)
    else:
        _stream_converted(model, pending.loader, plan, on_layer, later)
    _check_complete(model, pending.loader.preset, skip=_later_variables(backbone, later))


def _generated_first(pending: Pending, calibration, on_layer):
    """``calibration``, or the token ids the float model generates
    (``generated_unless_given``) before streaming starts: that is the peak
    memory of a self-calibrated apply, and its text is that of the float model,
    not of one whose token table is already quantized."""
    from hubquant.calibrate.run import reporter

    preset = pending.loader.preset
    report = reporter(on_layer)
    return generated_unless_given(pending.model, pending.plan, preset, calibration, report)


def generated_unless_given(model, plan: Plan, preset: str, calibration, report):
    """``calibration`` (token ids, or a ``Calibration`` with files; by default
    the Plan's), or, where it names no files, the token ids ``preset``'s float
    model generates (``generated_by_float``). ``model`` is refused first, in one
    line, if it cannot generate."""
    from hubquant.calibrate.generate import require_generator

    if isinstance(calibration, np.ndarray):
        return calibration
    cal = calibration_for(plan, calibration)
    if cal.files:
        return cal
    require_generator(model)  # before minutes of loading
    return generated_by_float(preset, cal, report)


def generated_by_float(preset: str, cal, report) -> np.ndarray:
    """The token ids ``preset``'s float model generates for ``cal`` (no files):
    the model loaded whole for it, as generating runs every block at every
    step, and dropped before the caller goes on."""
    from hubquant.calibrate.calibration import calibration_tokens
    from hubquant.float_preset import load_source

    float_model = load_source(preset)
    tokens = calibration_tokens(float_model, cal, report)
    del float_model
    gc.collect()  # a Keras model holds cycles
    release_free_memory()
    return tokens


def _later_variables(backbone, attrs) -> set[int]:
    layers = [layer_at(backbone, a) for a in attrs]
    return {id(getattr(layer, fm.attr)) for layer in layers for fm in _planned_floats(layer)}


@dataclass(frozen=True)
class FloatLater:
    """Where a float value lies in a preset's weights file, to read it later."""

    filename: str
    name: str  # the dataset's path in the file

    def read(self) -> np.ndarray:
        import h5py

        with h5py.File(self.filename, "r") as f:
            dataset = f[self.name]
            return _as_saved(dataset[...], dataset)


def read_later(store, key: str, fm: FloatMatrix):
    """A ``FloatLater`` for the value under ``key`` (the value itself when the
    store is not an HDF5 file)."""
    dataset = _dataset(store, key)
    if dataset is not None:
        return FloatLater(dataset.file.filename, dataset.name)
    return _Held(np.asarray(store[key]))


@dataclass(frozen=True)
class _Held:
    value: np.ndarray

    def read(self) -> np.ndarray:
        return self.value


def read_now(layer) -> None:
    """Give a layer's matrices left on disk (``read_later``) their float values."""
    later = layer.__dict__.pop("hubquant_later", None) or {}
    floats = layer._float_matrices()
    for name, where in later.items():
        set_value(getattr(layer, floats[name].attr), where.read())


def build_unloaded(preset: str):
    """``(model, preset loader)``: the float task (or backbone), unallocated."""
    import keras_hub

    from hubquant.float_preset import check_local, is_backbone_only, load_error_line, saved_dtype

    check_local(preset)
    kwargs = {"dtype": dtype} if (dtype := saved_dtype(preset)) else {}
    try:
        loader = internals.get_preset_loader(preset)
        with internals.deferred_variables():
            backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=False, **kwargs)
            if _saved_tied(preset, backbone):
                kwargs["tie_word_embeddings"] = True
                backbone = keras_hub.models.Backbone.from_preset(
                    preset, load_weights=False, **kwargs
                )
        model = backbone
        if not is_backbone_only(preset):
            try:  # the task's own layers are small: built as usual
                model = keras_hub.models.CausalLM.from_preset(
                    preset, backbone=backbone, load_weights=False
                )
            except ValueError as e:
                if "Unable to find a subclass" not in str(e):
                    raise
    except PresetError:
        raise
    except Exception as e:
        raise PresetError(load_error_line(preset, e)) from None
    _check_weight_bytes(model, preset)
    object.__setattr__(model, "hubquant_source", preset)  # its own tokenizer.json, if any
    return model, loader


def _saved_tied(preset: str, backbone) -> bool:
    """A KerasHub preset of a tied Llama saved by KerasHub itself: its config lacks
    ``tie_word_embeddings`` (KerasHub 0.32's ``get_config`` drops it) and its weights
    file holds one array fewer than the untied model has (no LM-head matrix)."""
    import h5py

    from hubquant.registered import constructor_arguments

    file = Path(preset).expanduser() / "model.weights.h5"
    if "tie_word_embeddings" not in constructor_arguments(type(backbone)) or not file.is_file():
        return False
    if getattr(backbone, "tie_word_embeddings", True):
        return False
    saved = json.loads((file.parent / "config.json").read_text()).get("config", {})
    if "tie_word_embeddings" in saved:
        return False
    arrays = []
    with h5py.File(file, "r") as f:
        f.visititems(
            lambda name, obj: arrays.append(name) if isinstance(obj, h5py.Dataset) else None
        )
    return len(arrays) == len(backbone.weights) - 1


def _check_weight_bytes(model, preset: str) -> None:
    """Refuse a local preset whose config describes more weights than its files can
    hold (at 2 bytes a value), before a single variable is allocated."""
    folder = Path(preset).expanduser()
    if not folder.is_dir():
        return
    files = [*folder.glob("*.weights.h5"), *folder.glob("*.safetensors")]
    held = sum(f.stat().st_size for f in files)
    params = sum(math.prod(v.shape) for v in model.weights)
    if files and 2 * params > held + (1 << 20):
        raise PresetError(
            f"preset '{preset}': its config describes {params:,} weights "
            f"({2 * params / 2**30:,.1f} GiB even at 16 bits), but its weights files hold "
            f"{held / 2**30:,.3f} GiB; the config does not match the weights."
        )


def set_value(variable, value) -> None:
    """Assign, or initialise a deferred variable directly with ``value``."""
    if tuple(np.shape(value)) != tuple(variable.shape):
        raise PresetError(
            f"the weights for '{variable.path}' have shape {list(np.shape(value))}; the "
            f"preset's config makes it {list(variable.shape)}."
        )
    internals.set_value(variable, value)


# -- KerasHub presets: Keras' own weight loading, one layer at a time ---------
def is_keras_preset(loader) -> bool:
    return isinstance(loader, internals.KerasPresetLoader)


def _stream_keras(
    model, loader, plan: Plan, on_layer, float_classes: dict, later=frozenset()
) -> None:
    """Keras' loading, planned layers quantized as they load (those in
    ``later`` only told where their matrices are)."""
    backbone = backbone_of(model)
    planned = set()
    for attr, entries in plan.layers().items():
        layer = layer_at(backbone, attr)
        if attr in later:
            layer.stream_from_float(None, read_later, release_free_memory, float_classes[attr])
        else:
            done = _done(on_layer, entries)
            layer.stream_from_float(entries[0].mode, read_matrix, done, float_classes[attr])
        planned |= {id(getattr(layer, fm.attr)) for fm in _planned_floats(layer)}
    for variable in model.weights:
        if internals.is_unset(variable) and id(variable) not in planned:
            set_value(variable, np.zeros(variable.shape, variable.dtype))
    try:
        internals.load_backbone_weights(loader, backbone)  # single file or shards, as KerasHub does
    except ValueError as e:
        _check_complete(model, loader.preset)  # names a planned layer left unread
        raise PresetError(f"preset '{loader.preset}' weights do not fit: {first_line(e)}") from None
    task_weights = None if model is backbone else internals.task_weights_file(loader.preset)
    if task_weights is not None:
        model.load_task_weights(task_weights)


def read_matrix(store, key: str, fm: FloatMatrix):
    """The float ``[N, K]`` matrix under ``key``: whole, or rows on demand; as
    ``Columns`` (blocks of stored rows, in the stored dtype) where ``fm`` takes
    them and the value is stored ``[K, N]``."""
    dataset = _dataset(store, key)
    small = dataset is None or dataset.ndim != 2 or dataset.nbytes <= WHOLE_BYTES
    if fm.to_columns is not None and not small and fm.row_axis == 1:
        shape = (dataset.shape[1], dataset.shape[0])
        return Columns(shape, lambda start, stop: _as_saved(dataset[start:stop], dataset))
    if small or fm.row_axis is None:
        return fm.read(store[key])

    def read(start: int, stop: int) -> np.ndarray:
        part = dataset[start:stop] if fm.row_axis == 0 else dataset[:, start:stop]
        part = _as_saved(part, dataset)
        return part if fm.row_axis == 0 else part.T

    return RowReader((dataset.shape[fm.row_axis], dataset.shape[1 - fm.row_axis]), read)


def _dataset(store, key: str):
    """The h5py dataset behind a Keras weights store entry, if there is one."""
    import h5py

    group = internals.h5_group(store)
    if isinstance(group, h5py.Group) and key in group:
        value = group[key]
        return value if isinstance(value, h5py.Dataset) else None
    return None


def _as_saved(values: np.ndarray, dataset) -> np.ndarray:
    """Values read from ``dataset`` in the dtype Keras saved (bf16 is stored as raw bits)."""
    return values.view(ml_dtypes.bfloat16) if dataset.attrs.get("dtype") == "bfloat16" else values


# -- Hugging Face folders: KerasHub's converters, quantizing as layers fill ---
def _stream_converted(model, loader, plan: Plan, on_layer, later=frozenset()) -> None:
    """KerasHub's converter, planned layers quantized as their matrices fill
    (those in ``later`` only told which tensor to read)."""
    backbone = backbone_of(model)
    waiting, deferred = {}, {}  # id(float matrix variable) -> (layer, entries | name)
    for attr, entries in plan.layers().items():
        layer = layer_at(backbone, attr)
        floats = layer._float_matrices()
        for name in layer.hubquant_specs:
            key = id(getattr(layer, floats[name].attr))
            if attr in later:
                deferred[key] = (layer, name)
            else:
                waiting[key] = (layer, entries)

    def port_weight(keras_variable, hf_weight_key, hook_fn=None):
        if id(keras_variable) in deferred:
            layer, name = deferred[id(keras_variable)]
            shape = list(keras_variable.shape)
            place = HfLater(loader.preset, hf_weight_key, hook_fn, shape)
            layer.__dict__.setdefault("hubquant_later", {})[name] = place
            return
        tensor = hf.get_tensor(hf_weight_key)
        if hook_fn:
            tensor = hook_fn(tensor, list(keras_variable.shape))
        set_value(keras_variable, tensor)
        owner = waiting.get(id(keras_variable))
        if owner is not None and _filled(owner[0]):
            _quantize_now(*owner, on_layer)

    with internals.SafetensorLoader(loader.preset) as hf:
        internals.with_port_weight(hf, port_weight)
        loader.converter.convert_weights(backbone, hf, loader.config)
    for layer, entries in {id(o[0]): o for o in waiting.values()}.values():
        if not getattr(layer, "_is_quantized", False):
            if not _filled(layer):
                raise PresetError(f"preset '{loader.preset}' has no weights for '{layer.path}'.")
            _quantize_now(layer, entries, on_layer)
    for layer, name in deferred.values():
        if name not in vars(layer).get("hubquant_later", {}):
            raise PresetError(f"preset '{loader.preset}' has no weights for '{layer.path}'.")


@dataclass(frozen=True)
class HfLater:
    """A tensor of a Hugging Face folder and the converter's hook, to read later."""

    preset: str
    key: str
    hook: object
    shape: list

    def read(self) -> np.ndarray:
        with internals.SafetensorLoader(self.preset) as hf:
            tensor = hf.get_tensor(self.key)
        return self.hook(tensor, self.shape) if self.hook else tensor


def _planned_floats(layer) -> list[FloatMatrix]:
    floats = layer._float_matrices()
    return [floats[name] for name in layer.hubquant_specs]


def _filled(layer) -> bool:
    return all(not internals.is_unset(getattr(layer, fm.attr)) for fm in _planned_floats(layer))


def _quantize_now(layer, entries, on_layer) -> None:
    layer.quantize(entries[0].mode)
    _done(on_layer, entries)()


def _done(on_layer, entries):
    def done() -> None:
        release_free_memory()
        if on_layer is not None:
            on_layer(entries)

    return done


def _check_complete(model, preset: str, skip=frozenset()) -> None:
    """Every planned layer was read; other variables the preset did not
    fill keep their initialiser's values, as ``from_preset`` leaves them
    (but for those in ``skip``, ids of matrices read later)."""
    unread = [layer for layer in internals.all_layers(model) if "_hubquant_stream" in vars(layer)]
    if unread:
        why = vars(unread[0]).get("hubquant_misfit")  # the file held another shape
        if why:
            raise PresetError(f"preset '{preset}': {why}")
        raise PresetError(f"preset '{preset}' has no weights for '{unread[0].path}'.")
    internals.initialize_deferred(model, skip)
