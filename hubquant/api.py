"""The library calls the CLI is a thin layer over."""

from __future__ import annotations

from pathlib import Path

from hubquant import registered, stream, surgery
from hubquant.calibrate.run import calibrate_plan, needs_calibration
from hubquant.config import Config
from hubquant.merge import merge_lora as merge_lora
from hubquant.paths import backbone_of
from hubquant.plan import Plan
from hubquant.planning import plan_for
from hubquant.recipe import Recipe
from hubquant.stream import Pending


def quantize(
    model,
    config: Config | str | Path,
    recipe: Recipe | str | Path | None = None,
    strict: bool = False,
    on_layer=None,
) -> Plan:
    """Quantize a KerasHub task or backbone in place; return the Plan used."""
    return apply_plan(model, plan_for(model, config, recipe, strict), on_layer=on_layer)


def apply_plan(model, plan: Plan, on_layer=None, calibration=None) -> Plan:
    """Surgery then quantization, as the Plan says; returns the Plan as applied.

    Entries with a calibrated algorithm (GPTQ, AWQ, imatrix) run block by block
    on ``calibration`` (default: the calibration the Plan carries, from its
    config; or token ids ``[samples, seq_len]``);
    where one falls back to round-to-nearest, the returned Plan says so and
    carries a note.
    """
    backbone = backbone_of(model)
    surgery.swap_layers(backbone, plan)
    if needs_calibration(plan):
        plan = calibrate_plan(model, plan, calibration, on_layer=on_layer)
    else:
        surgery.quantize_layers(backbone, plan, on_layer=on_layer)
    registered.mark_quantized(model, plan)
    return plan


def prepare(
    preset: str | Path,
    config: Config | str | Path,
    recipe: Recipe | str | Path | None = None,
    strict: bool = False,
) -> Pending:
    """A preset's model built without weights and its Plan: nothing is read yet.

    ``preset``: a KerasHub preset name or folder, a Hugging Face folder, or
    ``synthetic-gemma`` (the built-in default). ``.plan`` is what will be done;
    ``.quantize(on_layer)`` reads the weights, quantizing each planned layer as
    it arrives (calibrated ones block by block), and returns ``(model, plan)``.
    The float model is never held whole.
    """
    return stream.prepare(str(preset), config, recipe, strict=strict)


def apply(
    preset: str | Path,
    config: Config | str | Path,
    output: str | Path,
    recipe: Recipe | str | Path | None = None,
    formats=("preset",),
    strict: bool = False,
    overwrite: bool = False,
    on_layer=None,
) -> Plan:
    """Quantize a preset as it is read and save it to ``output``; the Plan as applied.

    What ``hubquant apply`` runs; see ``prepare`` for ``preset``.
    """
    from hubquant.io.output import check_target

    check_target(Path(output).absolute(), overwrite)  # before the minutes of work
    model, plan = prepare(preset, config, recipe, strict).quantize(on_layer)
    save(model, output, formats, overwrite=overwrite)
    return plan


def save(
    model,
    output: str | Path,
    formats=("preset",),
    overwrite: bool = False,
) -> Path:
    """Write a quantized model into the folder ``output``, all or nothing."""
    from hubquant.io import preset
    from hubquant.io.hf_export import check_no_adapters
    from hubquant.io.output import staged_output
    from hubquant.io.safetensors_format import nbytes
    from hubquant.layers import sharding

    plan = backbone_of(model).hubquant_plan
    writers = preset.writers(formats)
    if "hf" in formats:
        check_no_adapters(backbone_of(model))  # before anything is written
    weights = sum(nbytes(v) for v in model.weights)
    with sharding.on_host(model):  # sharded across processes: gathered by every one
        if not sharding.is_writer():
            return Path(output)  # the first process writes
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
