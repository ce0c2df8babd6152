"""hubquant: per-layer INT8/INT4 post-training quantization for KerasHub models."""

import os as _os

# KerasHub imports TensorFlow (for tf.text); keep its C++ start-up chatter quiet.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from hubquant._quiet import native_stderr_silenced as _silenced
from hubquant._version import __version__ as __version__

with _silenced():
    import keras_hub as _keras_hub  # noqa: F401

from hubquant import models as _models
from hubquant.api import apply_plan, export, load, plan_for, quantize, save
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

_models.register_all()

__all__ = [
    "ArtefactError",
    "ConfigError",
    "HubquantError",
    "OutputError",
    "Plan",
    "PlanEntry",
    "PresetError",
    "RecipeError",
    "apply_plan",
    "export",
    "load",
    "plan_for",
    "quantize",
    "save",
]
