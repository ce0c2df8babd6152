"""What each CLI subcommand does, as library calls that print."""

from __future__ import annotations

import json
from pathlib import Path

from hubquant.errors import HubquantError


def apply(
    preset: str | None,
    config: str | None,
    output: str | None,
    recipe: str | None = None,
    formats: str = "preset",
    dry_run: bool = False,
    strict: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    report: str | None = None,
    calibration: list[str] | None = None,
    target_size: str | None = None,
    target_bits: str | None = None,
) -> int:
    """Load a float preset, quantize it as the config says, save it.

    ``calibration``: text files or globs replacing the config's calibration files.
    With a budget (``target_size`` or ``target_bits``) instead of a config, the
    config is tuned first (``hubquant tune``) on those files or generated text.
    """
    from hubquant import api
    from hubquant import report as report_mod
    from hubquant.config import load_config
    from hubquant.io.output import check_target
    from hubquant.progress import Progress
    from hubquant.recipe import get_recipe
    from hubquant.synthetic import DEFAULT_PRESET

    say = (lambda *a: None) if quiet else print
    format_list = _formats(formats)
    if output is None and not dry_run:
        raise HubquantError("--output is required (or pass --dry-run). Received: output=None")
    if output is not None and not dry_run:
        check_target(Path(output).absolute(), overwrite)
    if report:
        _check_report(Path(report))
    budget = _budget(config, target_size, target_bits)
    if budget is None:
        config_obj = _with_calibration(load_config(config), calibration)
    recipe_obj = get_recipe(recipe) if recipe else None
    if preset is None:
        preset = DEFAULT_PRESET
    if preset != DEFAULT_PRESET:
        from hubquant.float_preset import resolve_preset

        preset, note = resolve_preset(preset)
        if note:
            say(note)
    else:
        say(
            f"using the built-in preset '{DEFAULT_PRESET}': synthetic random weights; it shows the pipeline, not a useful model"
        )
    _check_recipe(preset, recipe_obj)  # before reading weights that no recipe serves
    if budget is not None:
        from hubquant.tune.command import tuned_config

        config_obj = _with_calibration(
            tuned_config(preset, budget, calibration, recipe_obj, say), calibration
        )
    pending = api.prepare(preset, config_obj, recipe_obj, strict=strict)
    plan = pending.plan
    if dry_run:
        print(report_mod.plan_table(plan))
        return 0
    if "hf" in format_list:
        from hubquant.io.hf_export import check_exportable

        check_exportable(plan, applied=False)  # before the minutes quantizing takes
    for line in plan.unmatched_rules:
        say(f"warning: {line} matched no layer")
    with Progress(plan, quiet=quiet) as progress:
        model, plan = pending.quantize(on_layer=progress)
    for line in plan.notes:
        say(f"note: {line}")
    api.save(model, output, format_list, overwrite=overwrite)
    say(report_mod.role_table(plan, progress.seconds, progress.other))
    if report:
        _write_report(Path(report), report_mod.role_report(plan, progress.seconds, progress.other))
    say(f"wrote {output} ({', '.join(format_list)})")
    return 0


def _budget(config: str | None, target_size: str | None, target_bits: str | None):
    """The budget to tune to, or None when a config is given (one of the two)."""
    if config is not None and (target_size, target_bits) == (None, None):
        return None
    if config is not None or (target_size, target_bits) == (None, None):
        raise HubquantError(
            "give --config (a mode config) or a budget (--target-size / --target-bits): "
            f"one of the two. Received: config={config}, target_size={target_size}, "
            f"target_bits={target_bits}"
        )
    from hubquant.tune.budget import parse_budget

    return parse_budget(target_size, target_bits)


def _check_report(path: Path) -> None:
    """Refuse a --report that cannot be written, before the minutes of work."""
    from hubquant.io.output import check_writable_file

    check_writable_file(path, f"cannot write report '{path}'")


def _write_report(path: Path, data: dict) -> None:
    from hubquant.errors import OutputError
    from hubquant.io.output import reason

    try:
        path.write_text(json.dumps(data, indent=1))
    except OSError as e:
        raise OutputError(f"cannot write report '{path}': {reason(e)}") from None


def _check_recipe(preset: str, recipe) -> None:
    from hubquant.float_preset import backbone_class_names
    from hubquant.recipe import recipe_for_backbone

    names = backbone_class_names(preset)
    if names is not None:
        recipe_for_backbone(names, extra=recipe)


def _with_calibration(config, files: list[str] | None):
    """``config`` with ``--calibration`` files in place of its own."""
    import dataclasses

    from hubquant.calibrate.calibration import Calibration

    if files:
        base = config.calibration or Calibration(source="--calibration")
        config = dataclasses.replace(config, calibration=base.with_files(tuple(files)))
    return config


def _formats(text: str) -> tuple[str, ...]:
    from hubquant.io.preset import writers

    formats = tuple(f.strip() for f in text.split(",") if f.strip()) or ("preset",)
    writers(formats)  # unknown names fail before any work
    return formats


def inspect(path: str, as_json: bool, plot: str | None = None) -> int:
    from hubquant.inspection import format_inspection, inspect_path

    if plot:
        from hubquant.tune.picture import check_plot

        check_plot(plot)
    info = inspect_path(path)
    print(json.dumps(info, indent=1) if as_json else format_inspection(info))
    if plot and info.get("layers"):
        from hubquant.tune.picture import save_heatmap

        save_heatmap(info["layers"], plot, f"{path}: {info.get('config_source')}")
    return 0 if info["complete"] else 2


def evaluate(preset, quantized, text, seq_len, windows, as_json) -> int:
    from hubquant.evaluate import evaluate as run
    from hubquant.synthetic import DEFAULT_PRESET

    result = run(preset or DEFAULT_PRESET, quantized, text, seq_len, windows)
    print(json.dumps(result.to_dict(), indent=1) if as_json else result.table())
    return 0


def export(source: str, to: str, output: str, overwrite: bool = False) -> int:
    """Export a saved artefact, e.g. to a Hugging Face compressed-tensors folder."""
    from hubquant import api
    from hubquant.io.output import check_target

    check_target(Path(output).absolute(), overwrite)
    api.export(source, output, to=to, overwrite=overwrite)
    print(f"wrote {output} ({to})")
    return 0


def list_presets(filter_text: str = "") -> int:
    """KerasHub presets that a shipped recipe serves, with parameter counts."""
    from hubquant.float_preset import supported_presets

    rows = supported_presets(filter_text)
    for preset, recipe, params in rows:
        size = (
            ""
            if params is None
            else f"{params / 1e9:.2f}B params"
            if params >= 1e9
            else f"{params / 1e6:.0f}M params"
        )
        print(f"{preset:40s} {recipe:10s} {size}")
    if not rows:
        print(f"no KerasHub preset with a recipe matches '{filter_text}'")
    return 0


def list_recipes() -> int:
    """Every recipe hubquant finds, with where it came from."""
    from hubquant.recipe import discovered_recipes

    for recipe in discovered_recipes().values():
        where = "shipped" if recipe.origin == "shipped" else recipe.where
        print(f"{recipe.name:12s} {', '.join(recipe.backbones):40s} {where}")
    return 0


def show_recipe(name: str) -> int:
    from hubquant.recipe import get_recipe

    print(get_recipe(name).text, end="")
    return 0


def validate_recipe(path: str) -> int:
    """Check a recipe file without a model: one OK line, or a RecipeError."""
    from hubquant.recipe import load_recipe

    recipe = load_recipe(path)
    roles = ", ".join(spec.role for spec in recipe.roles)
    print(f"OK {path}: recipe '{recipe.name}' for {', '.join(recipe.backbones)}; roles {roles}")
    return 0


def new_recipe(preset: str) -> int:
    """Print a draft recipe for the model ``preset`` describes."""
    from hubquant.recipe_draft import draft_recipe

    print(draft_recipe(preset), end="")
    return 0


def list_shipped(kind: str) -> int:
    from hubquant.shipped import shipped_files

    for name, path in shipped_files(kind).items():
        print(f"{name:12s} {_first_comment(path)}")
    return 0


def show_shipped(kind: str, name: str) -> int:
    from hubquant.shipped import shipped_files

    files = shipped_files(kind)
    path = files.get(name.removesuffix(".yaml"))
    if path is None:
        raise HubquantError(
            f"no shipped {kind[:-1]} named '{name}'; shipped: {', '.join(files)}. Received: name={name!r}"
        )
    print(path.read_text(), end="")
    return 0


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
