"""The library calls the CLI is a thin layer over."""

from __future__ import annotations

from pathlib import Path

from keras_hub.models import Task

from hubquant import models, surgery
from hubquant.config import Config, load_config
from hubquant.plan import Plan, resolve_plan
from hubquant.recipe import Recipe, get_recipe, recipe_for_backbone


def plan_for(
    model,
    config: Config | str | Path,
    recipe: Recipe | str | Path | None = None,
    strict: bool = False,
) -> Plan:
    """Resolve the Plan for a float model without changing it."""
    models.require_float(model)
    backbone = backbone_of(model)
    if not isinstance(config, Config):
        config = load_config(config)
    if recipe is not None and not isinstance(recipe, Recipe):
        recipe = get_recipe(recipe)
    names = [c.__name__ for c in type(backbone).__mro__]
    recipe = recipe_for_backbone(names, extra=recipe)
    return resolve_plan(backbone, recipe, config, strict=strict)


def quantize(
    model,
    config: Config | str | Path,
    recipe: Recipe | str | Path | None = None,
    strict: bool = False,
    on_layer=None,
) -> Plan:
    """Quantize a KerasHub task or backbone in place; return the Plan used."""
    plan = plan_for(model, config, recipe, strict)
    apply_plan(model, plan, on_layer=on_layer)
    return plan


def apply_plan(model, plan: Plan, on_layer=None) -> None:
    """Surgery then quantization, as the Plan says."""
    backbone = backbone_of(model)
    surgery.swap_layers(backbone, plan)
    surgery.quantize_layers(backbone, plan, on_layer=on_layer)
    models.mark_quantized(model, plan)


def backbone_of(model):
    return model.backbone if isinstance(model, Task) else model
