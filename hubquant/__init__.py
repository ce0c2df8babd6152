"""hubquant: per-layer INT8/INT4 post-training quantization for KerasHub models."""

__version__ = "0.1.0"

from hubquant import models as _models
from hubquant.api import apply_plan, plan_for, quantize
from hubquant.errors import (
    ArtefactError,
    ConfigError,
    HubquantError,
    OutputError,
    PresetError,
    RecipeError,
)
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
    "plan_for",
    "quantize",
]
