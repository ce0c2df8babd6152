"""``hubquant tune``: load the float model, choose, measure, write the config."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import numpy as np

from hubquant.errors import HubquantError, OutputError


def run(
    preset: str | None,
    output_config: str,
    target_size: str | None = None,
    target_bits: str | None = None,
    calibration: list[str] | None = None,
    candidates: str | None = None,
    recipe: str | None = None,
    samples: int | None = None,
    seq_len: int | None = None,
    report: str | None = None,
    plot: str | None = None,
    quiet: bool = False,
    fused: bool = False,
) -> int:
    from hubquant.tune.budget import parse_budget
    from hubquant.tune.candidates import parse_candidates

    say = (lambda *a: None) if quiet else print
    _require_jax()
    budget = parse_budget(target_size, target_bits)
    choices = parse_candidates(candidates)
    _check_counts(samples, seq_len)
    target = Path(output_config)
    _check_writable(target, "--output-config")
    if report:
        _check_writable(Path(report), "--report")
    if plot:
        from hubquant.tune.picture import check_plot

        check_plot(plot)
    source, objective = _float_source(preset, recipe, say)
    tokens = _tokens(source, objective, calibration, samples, seq_len, say)
    tuned, text, measured = choose(source, objective, budget, tokens, choices, recipe, say, fused)
    _write(target, text)
    if report:
        _write(Path(report), _report_json(tuned, measured))
    if plot:
        from hubquant.tune.picture import save_heatmap

        save_heatmap(tuned.rows(), plot, f"{source.preset}: {budget.text}")
    say(f"wrote {target}")
    return 0


def tuned_config(preset: str, budget, files, recipe, say):
    """The config ``tune`` chooses for ``preset`` (``apply --target-size``)."""
    from hubquant.config import parse_config
    from hubquant.tune.candidates import parse_candidates

    _require_jax()
    source, objective = _float_source(preset, recipe, say)
    tokens = _tokens(source, objective, files, None, None, say)
    choices = parse_candidates(None)
    _, text, _ = choose(source, objective, budget, tokens, choices, recipe, say)
    return parse_config(text, "the tuned config")


def choose(source, objective, budget, tokens, choices, recipe, say, fused: bool = False):
    """Tune on all but the last windows, measure on those; the config text.
    ``source``: a ``streamed.Streamed`` preset (never whole in float)."""
    from hubquant.config import parse_config
    from hubquant.tune import tune
    from hubquant.tune.picture import choice_table
    from hubquant.tune.writer import config_text

    held = min(objective.held_out, max(1, len(tokens) // 4)) if len(tokens) > 1 else 0
    fit, check = tokens[: len(tokens) - held], tokens[len(tokens) - held :]
    tuned = tune(source, budget, fit, choices, recipe, report=say, fused=fused, objective=objective)
    header = _header(tuned, budget, source.preset)
    text = config_text(tuned.entries, tuned.choices(), header)
    measured = None
    if held:
        config = parse_config(text, "the tuned config")
        measured = _measure(source, tuned, objective, config, recipe, check, say)
        line = f"Measured on held-out calibration windows: {objective.describe(measured)}."
        text = config_text(tuned.entries, tuned.choices(), [*header, line])
    say(choice_table(tuned.rows()))
    say(_summary(tuned, measured))
    return tuned, text, measured


def _measure(source, tuned, objective, config, recipe, windows, say) -> dict:
    """The tuned config's outputs against float on ``windows``: the float
    outputs a block at a time, then the preset quantized as ``apply`` would."""
    from hubquant.stream import stream_quantize
    from hubquant.tune.blockwise import float_outputs

    variables = [source.variable(e) for e in tuned.entries]
    outputs = float_outputs(source.model, tuned.entries, variables, source.read, windows, objective)
    reference = objective.reference_of(outputs)
    say("measuring: the preset quantized with the tuned config")
    quantized, _ = stream_quantize(source.preset, config, recipe)
    return objective.measure(quantized, windows, reference)


def _header(tuned, budget, preset: str) -> list[str]:
    command = "hubquant " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return [
        f"Tuned by hubquant tune for {preset}: {budget.text} -> the quantized matrices may",
        f"take {tuned.budget_bytes:,} bytes of their {tuned.float_bytes:,} in float; they take "
        f"{tuned.chosen_bytes:,} ({tuned.chosen_bytes / tuned.float_bytes:.3f}).",
        f"Predicted {tuned.objective.predicted}: {tuned.predicted:.4g} (Fisher estimate).",
        f"Command: {command}",
    ]


def _summary(tuned, measured) -> str:
    line = (
        f"{tuned.chosen_bytes:,} of {tuned.budget_bytes:,} bytes allowed "
        f"({tuned.chosen_bytes / tuned.float_bytes:.3f} of float); "
        f"predicted {tuned.objective.predicted} {tuned.predicted:.4g}"
    )
    if measured:
        line += f"; measured {tuned.objective.describe(measured)}"
    return line


def _report_json(tuned, measured) -> str:
    import json

    return json.dumps(
        {
            "budget_bytes": tuned.budget_bytes,
            "float_bytes": tuned.float_bytes,
            "chosen_bytes": tuned.chosen_bytes,
            "objective": tuned.objective.name,
            "predicted": tuned.predicted,  # KL per token, or 1 - cosine per window
            "measured": measured,  # {kl, top1} or {cosine, min_cosine}
            "candidates": [c.name for c in tuned.candidates],
            "layers": tuned.rows(),
        },
        indent=1,
    )


def _float_source(preset: str | None, recipe, say):
    """The preset as tune reads it (``streamed.Streamed``) and what it protects."""
    from hubquant.float_preset import resolve_preset
    from hubquant.synthetic import DEFAULT_PRESET
    from hubquant.tune import tuning_config
    from hubquant.tune.objective import objective_for
    from hubquant.tune.streamed import open_streamed

    preset = preset or DEFAULT_PRESET
    if preset != DEFAULT_PRESET:
        preset, note = resolve_preset(preset)
        if note:
            say(note)
    source = open_streamed(preset, tuning_config(), recipe)
    return source, objective_for(source.model)  # an LM or a text encoder, else one line


def _tokens(source, objective, files, samples: int | None, seq_len: int | None, say):
    """Calibration windows: as ``apply`` cuts (or generates) them for an LM;
    framed by the start and end tokens for an encoder, from ``files`` only."""
    from hubquant.calibrate.calibration import Calibration, calibration_tokens
    from hubquant.calibrate.generate import Generate
    from hubquant.stream import generated_by_float
    from hubquant.tune.objective import NextToken

    samples, seq_len = samples or objective.samples, seq_len or objective.seq_len
    generate = Generate(num_samples=samples, seq_len=seq_len)
    cal = Calibration(tuple(files or ()), samples, seq_len, generate=generate)
    if not isinstance(objective, NextToken):
        return _encoder_tokens(source.model, cal)
    if cal.files:
        return calibration_tokens(source.model, cal, report=say)
    return generated_by_float(source.preset, cal, say)  # as apply does


def _encoder_tokens(model, cal) -> np.ndarray:
    from hubquant.calibrate.calibration import read_texts
    from hubquant.text import token_ids
    from hubquant.tune.objective import encoder_windows

    if not cal.files:
        raise HubquantError(
            "tune on a text encoder needs calibration text: give --calibration FILE "
            "(an encoder cannot write its own, as a causal LM does)."
        )
    source = getattr(model, "hubquant_source", None)
    tokenizer = _encoder_tokenizer(source)
    ids = token_ids(tokenizer, read_texts(cal), source)
    return encoder_windows(tokenizer, ids, cal.num_samples, cal.seq_len)


def _encoder_tokenizer(preset):
    import keras_hub

    try:
        return keras_hub.models.Tokenizer.from_preset(str(preset))
    except Exception as e:  # a backbone saved without its tokenizer
        raise HubquantError(
            f"tune on a text encoder needs its tokenizer, and preset '{preset}' has none "
            f"({type(e).__name__})."
        ) from None


def _require_jax() -> None:
    import keras

    if keras.config.backend() != "jax":
        raise HubquantError(
            "hubquant tune differentiates the model with JAX; run it with KERAS_BACKEND=jax "
            f"(the Keras backend now is {keras.config.backend()})."
        )


def _check_counts(samples: int | None, seq_len: int | None) -> None:
    if (samples is not None and samples < 1) or (seq_len is not None and seq_len < 2):
        raise HubquantError(
            f"--samples must be at least 1 and --seq-len at least 2. "
            f"Received: samples={samples}, seq_len={seq_len}"
        )


def _check_writable(path: Path, option: str) -> None:
    from hubquant.io.output import check_writable_file

    check_writable_file(path, f"{option}: cannot write '{path}'")


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a temporary file beside it, then renamed."""
    from hubquant.io.output import reason

    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write '{path}': {reason(e)}") from None
