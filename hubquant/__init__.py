"""hubquant: per-layer INT8/INT4 post-training quantization for KerasHub models."""

import os as _os

# KerasHub imports TensorFlow (for tf.text); keep its C++ start-up chatter quiet.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from hubquant._quiet import native_stderr_silenced as _silenced
from hubquant._version import __version__ as __version__

with _silenced():
    import keras_hub as _keras_hub  # noqa: F401

from hubquant import registered as _registered
from hubquant.errors import (
    ArtefactError,
    ConfigError,
    HubquantError,
    OutputError,
    PresetError,
    RecipeError,
)
from hubquant.io import tokenizers as _tokenizers  # noqa: F401  (registers classes)
from hubquant.plan import Plan, PlanEntry

# Registered classes exist as soon as hubquant is imported, so artefacts load
# through plain ``keras.saving.load_model`` and ``from_preset`` too.
_registered.register_all()

# The library's calls (``hubquant.api``) load on first use: ``import
# hubquant.quantizers`` and other leaf modules do not pull in the whole house.
_API = (
    "apply",
    "apply_plan",
    "export",
    "load",
    "merge_lora",
    "plan_for",
    "prepare",
    "quantize",
    "save",
)


def __getattr__(name: str):
    if name in _API:
        from hubquant import api

        return getattr(api, name)
    raise AttributeError(f"module 'hubquant' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


__all__ = [
    "ArtefactError",
    "ConfigError",
    "HubquantError",
    "OutputError",
    "Plan",
    "PlanEntry",
    "PresetError",
    "RecipeError",
    *_API,
]
