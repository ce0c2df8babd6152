"""Every use of Keras' and KerasHub's private parts, in one place.

hubquant needs a few things neither library makes public: variables that hold
no memory until given a value, unlocking a layer's tracker to swap variables,
KerasHub's preset loaders and registries, and its converters' ``port_weight``
hook. When Keras or KerasHub changes, this is the file to check
(``tests/`` exercise each function here through the paths that use it).
"""

from __future__ import annotations

import contextlib
import importlib

import keras
from keras.src.backend.common import global_state
from keras_hub.src.utils import preset_utils
from keras_hub.src.utils.transformers import preset_loader, safetensor_utils

# -- variables and layers ------------------------------------------------------


@contextlib.contextmanager
def deferred_variables():
    """Variables created inside hold no memory until they are given a value.

    Keras registers them for a later global initialisation; they are taken
    off that list here, so only hubquant decides when each one is filled.
    """
    before = list(global_state.get_global_attribute("uninitialized_variables") or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute("uninitialized_variables", before)


def is_unset(variable) -> bool:
    """A deferred variable not yet given a value."""
    return variable._value is None


def set_value(variable, value) -> None:
    """Assign ``value``, or initialise a deferred variable directly with it."""
    if is_unset(variable):
        variable._initializer = lambda shape, dtype=None: value
        variable._deferred_initialize()
    else:
        variable.assign(value)


def place(variable, value) -> None:
    """Give a variable with a layout (under a distribution) the host array
    ``value``, which goes to each device as its shard: Keras' ``assign`` and
    initialisers would first copy the whole of it onto one device."""
    if is_unset(variable):
        variable._initialize(value)
    else:
        variable._direct_assign(value)


def initialize_deferred(model, skip=frozenset()) -> None:
    """Give every still-deferred variable (not in ``skip``, a set of ids) its
    initialiser's value."""
    for variable in model.weights:
        if is_unset(variable) and id(variable) not in skip:
            variable._deferred_initialize()


@contextlib.contextmanager
def unlocked(layer):
    """Let ``layer`` drop and add variables after it was built."""
    layer._tracker.unlock()
    try:
        yield
    finally:
        layer._tracker.lock()


def own_variables(layer) -> list:
    """The variables a layer created itself (not those of layers inside it)."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def variable_layout(variable):
    """The layout a variable was created with under a distribution (None if none)."""
    return getattr(variable, "_layout", None)


@contextlib.contextmanager
def value_swapped(variable, value):
    """``variable`` reads as ``value`` (NumPy, for writers) while active."""
    held = variable._value
    variable._value = value
    try:
        yield
    finally:
        variable._value = held


def forget_variable(layer, variable) -> None:
    """Stop ``layer`` tracking ``variable`` (without Keras' per-call garbage collection)."""
    layer._untrack_variable(variable)


@contextlib.contextmanager
def dtype_policy_as(layer, policy):
    """``layer``'s dtype policy set to ``policy`` while inside (no rebuild, nothing cast)."""
    saved, layer._dtype_policy = layer._dtype_policy, policy
    try:
        yield
    finally:
        layer._dtype_policy = saved


def all_layers(model) -> list:
    """Every layer inside ``model`` (not ``model`` itself), nested ones included,
    in the order KerasHub numbers them."""
    return list(model._flatten_layers(include_self=False))


def float_policy_name(policy) -> str:
    """The float dtype policy a (possibly quantized) policy was made from."""
    if policy.quantization_mode is None:
        return policy.name
    return policy._source_name


def note_lora_layers(backbone, layers: list, rank: int) -> None:
    """What KerasHub's ``save_lora_weights`` reads after ``enable_lora``: the adapted
    layers' indices among the backbone's layers with weights, and the rank."""
    ids = {id(layer) for layer in layers}
    with_weights = [layer for layer in all_layers(backbone) if layer.weights]
    backbone._lora_enabled_layers = [i for i, x in enumerate(with_weights) if id(x) in ids]
    backbone._lora_rank = rank


def h5_group(store):
    """The h5py group behind a Keras weights store entry, or None."""
    return getattr(store, "_h5_entry_group", None)


@contextlib.contextmanager
def h5_file_opener(open_file):
    """While inside, Keras opens each HDF5 weights file with
    ``open_file(keras_open, store, path, mode)`` (``keras_open``: its own way).
    A process-wide swap: hubquant saves one model at a time."""
    from keras.src.saving.saving_lib import H5IOStore

    keras_open = H5IOStore._get_h5_file
    H5IOStore._get_h5_file = lambda store, path, mode=None: open_file(keras_open, store, path, mode)
    try:
        yield
    finally:
        H5IOStore._get_h5_file = keras_open


# -- KerasHub presets ----------------------------------------------------------
TASK_WEIGHTS_FILE = preset_utils.TASK_WEIGHTS_FILE
KerasPresetLoader = preset_utils.KerasPresetLoader
TransformersPresetLoader = preset_loader.TransformersPresetLoader
SafetensorLoader = safetensor_utils.SafetensorLoader
find_subclass = preset_utils.find_subclass
get_preset_loader = preset_utils.get_preset_loader
load_json = preset_utils.load_json


def builtin_presets() -> dict:
    """KerasHub's registry of its own presets, by name."""
    return preset_utils.BUILTIN_PRESETS


def builtin_presets_by_backbone() -> dict:
    """KerasHub's presets grouped by backbone class."""
    return preset_utils.BUILTIN_PRESETS_FOR_BACKBONE


def load_backbone_weights(loader, backbone) -> None:
    """A KerasHub preset's backbone weights, single file or shards, as KerasHub reads them."""
    loader._load_backbone_weights(backbone)


def task_weights_file(preset: str) -> str | None:
    """The preset's task weights file (fetched if remote), or None when it has none."""
    if not preset_utils.check_file_exists(preset, TASK_WEIGHTS_FILE):
        return None
    return preset_utils.get_file(preset, TASK_WEIGHTS_FILE)


def with_port_weight(loader, port_weight) -> None:
    """Route a KerasHub converter's reads through ``port_weight(variable, key, hook)``."""
    loader.port_weight = port_weight


def hf_exporter():
    """KerasHub's Hugging Face exporter module (its per-family config and weight maps)."""
    return importlib.import_module("keras_hub.src.utils.transformers.export.hf_exporter")
