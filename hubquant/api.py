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
    calibration = config.calibration if isinstance(config, Config) else None
    return apply_plan(model, plan, on_layer=on_layer, calibration=calibration)


def apply_plan(model, plan: Plan, on_layer=None, calibration=None) -> Plan:
    """Surgery then quantization, as the Plan says; returns the Plan as applied.

    Entries with a calibrated algorithm (GPTQ, AWQ) run block by block on
    ``calibration`` (default: the ``calibration:`` section of the Plan's config);
    where one falls back to round-to-nearest, the returned Plan says so and
    carries a note.
    """
    from hubquant.calibrate.run import calibrate_plan, needs_calibration

    backbone = backbone_of(model)
    surgery.swap_layers(backbone, plan)
    if needs_calibration(plan):
        plan = calibrate_plan(model, plan, calibration, on_layer=on_layer)
    else:
        surgery.quantize_layers(backbone, plan, on_layer=on_layer)
    models.mark_quantized(model, plan)
    return plan


def backbone_of(model):
    return model.backbone if isinstance(model, Task) else model


def save(
    model,
    output: str | Path,
    formats=("preset",),
    overwrite: bool = False,
) -> Path:
    """Write a quantized model into the folder ``output``, all or nothing."""
    from hubquant.io import preset
    from hubquant.io.output import staged_output
    from hubquant.io.safetensors_format import nbytes

    plan = backbone_of(model).hubquant_plan
    writers = preset.writers(formats)
    weights = sum(nbytes(v) for v in model.weights)
    with staged_output(output, overwrite, needs=weights * len(writers)) as stage:
        for write in writers:
            write(model, stage)
        preset.write_metadata(stage, plan, formats)
    return Path(output)


def load(path: str | Path):
    """The quantized task model (or backbone) from a folder, ``.keras`` or ``.safetensors``.

    A Hugging Face folder in compressed-tensors format is imported as well.
    """
    from hubquant.errors import ArtefactError
    from hubquant.io.preset import load_folder, load_keras

    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        return load_keras(path)
    if path.is_file() and path.suffix == ".safetensors":
        from hubquant.io.safetensors_format import load_safetensors

        return load_safetensors(path)
    if path.is_dir():
        from hubquant.io.hf_import import is_hf_folder, load_hf

        if not (path / "hubquant.json").is_file() and is_hf_folder(path):
            return load_hf(path)
        return load_folder(path)
    raise ArtefactError(
        f"'{path}' not found: expected a hubquant folder, a .keras or a .safetensors file."
    )


def export(source: str | Path, output: str | Path, to: str = "hf", overwrite: bool = False) -> Path:
    """Export a saved hubquant artefact to another ecosystem's format."""
    from hubquant.errors import HubquantError
    from hubquant.io.hf_export import export_hf
    from hubquant.io.output import staged_output

    if to != "hf":
        raise HubquantError(f"unknown export target '{to}'; accepted: hf. Received: to={to!r}")
    model = load(source)
    with staged_output(output, overwrite) as stage:
        export_hf(model, stage)
    return Path(output)
