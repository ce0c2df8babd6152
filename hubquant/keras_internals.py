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
    with keras.StatelessScope(initialize_variables=False):
        yield
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


def all_layers(model) -> list:
    """Every layer inside ``model``, nested ones included."""
    return list(model._flatten_layers())


def h5_group(store):
    """The h5py group behind a Keras weights store entry, or None."""
    return getattr(store, "_h5_entry_group", None)


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
