"""``hubquant tune``: load the float model, choose, measure, write the config."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import numpy as np

from hubquant.errors import HubquantError, OutputError

HELD_OUT = 4  # calibration windows kept back to measure the choice
# 12 windows for the Fisher pass: on SmolLM2-135M the choice measured as well as with 28
# (KL 0.2002 against 0.1998 on held-out text) in 94 s instead of 125 s.
SAMPLES = 16


def run(
    preset: str | None,
    output_config: str,
    target_size: str | None = None,
    target_bits: str | None = None,
    calibration: list[str] | None = None,
    candidates: str | None = None,
    recipe: str | None = None,
    samples: int = SAMPLES,
    seq_len: int = 256,
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
    model, preset = _float_model(preset, say)
    tokens = _tokens(model, calibration, samples, seq_len, say)
    tuned, text, measured = choose(model, budget, tokens, choices, recipe, say, preset, fused)
    _write(target, text)
    if report:
        _write(Path(report), _report_json(tuned, measured))
    if plot:
        from hubquant.tune.picture import save_heatmap

        save_heatmap(tuned.rows(), plot, f"{preset}: {budget.text}")
    say(f"wrote {target}")
    return 0


def tuned_config(preset: str, budget, files, recipe, say):
    """The config ``tune`` chooses for ``preset`` (``apply --target-size``)."""
    from hubquant.config import parse_config
    from hubquant.tune.candidates import parse_candidates

    _require_jax()
    model, preset = _float_model(preset, say)
    tokens = _tokens(model, files, SAMPLES, 256, say)
    _, text, _ = choose(model, budget, tokens, parse_candidates(None), recipe, say, preset)
    return parse_config(text, "the tuned config")


def choose(model, budget, tokens, choices, recipe, say, preset: str, fused: bool = False):
    """Tune on all but the last windows, measure on those; the config text."""
    from hubquant.api import quantize
    from hubquant.config import parse_config
    from hubquant.tune import tune
    from hubquant.tune.measure import float_log_probs, kl_and_top1
    from hubquant.tune.picture import choice_table
    from hubquant.tune.writer import config_text

    held = min(HELD_OUT, max(1, len(tokens) // 4)) if len(tokens) > 1 else 0
    fit, check = tokens[: len(tokens) - held], tokens[len(tokens) - held :]
    tuned = tune(model, budget, fit, choices, recipe, report=say, fused=fused)
    header = _header(tuned, budget, preset)
    text = config_text(tuned.entries, tuned.choices(), header)
    config = parse_config(text, "the tuned config")
    measured = None
    if held:
        reference = float_log_probs(model, check)
        quantize(model, config, recipe)
        measured = kl_and_top1(model, check, reference)
        text = config_text(tuned.entries, tuned.choices(), header + _measured_line(measured))
    say(choice_table(tuned.rows()))
    say(_summary(tuned, measured))
    return tuned, text, measured


def _header(tuned, budget, preset: str) -> list[str]:
    command = "hubquant " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return [
        f"Tuned by hubquant tune for {preset}: {budget.text} -> the quantized matrices may",
        f"take {tuned.budget_bytes:,} bytes of their {tuned.float_bytes:,} in float; they take "
        f"{tuned.chosen_bytes:,} ({tuned.chosen_bytes / tuned.float_bytes:.3f}).",
        f"Predicted KL(float || tuned) per token: {tuned.predicted_kl:.4g} (Fisher estimate).",
        f"Command: {command}",
    ]


def _measured_line(measured) -> list[str]:
    kl, top1 = measured
    return [f"Measured on held-out calibration windows: KL {kl:.4g}, top-1 agreement {top1:.1%}."]


def _summary(tuned, measured) -> str:
    line = (
        f"{tuned.chosen_bytes:,} of {tuned.budget_bytes:,} bytes allowed "
        f"({tuned.chosen_bytes / tuned.float_bytes:.3f} of float); "
        f"predicted KL {tuned.predicted_kl:.4g}"
    )
    if measured:
        line += f", measured KL {measured[0]:.4g}, top-1 {measured[1]:.1%}"
    return line


def _report_json(tuned, measured) -> str:
    import json

    return json.dumps(
        {
            "budget_bytes": tuned.budget_bytes,
            "float_bytes": tuned.float_bytes,
            "chosen_bytes": tuned.chosen_bytes,
            "predicted_kl": tuned.predicted_kl,
            "measured_kl": measured[0] if measured else None,
            "measured_top1": measured[1] if measured else None,
            "candidates": [c.name for c in tuned.candidates],
            "layers": tuned.rows(),
        },
        indent=1,
    )


def _float_model(preset: str | None, say):
    from hubquant.float_preset import load_source, resolve_preset
    from hubquant.synthetic import DEFAULT_PRESET

    preset = preset or DEFAULT_PRESET
    if preset != DEFAULT_PRESET:
        preset, note = resolve_preset(preset)
        if note:
            say(note)
    model = load_source(preset)
    if getattr(model, "preprocessor", None) is None:
        raise HubquantError(
            f"tune needs a causal LM with its tokenizer; preset '{preset}' loads as a bare "
            f"{type(model).__name__}."
        )
    return model, preset


def _tokens(model, files, samples: int, seq_len: int, say) -> np.ndarray:
    from hubquant.calibrate.calibration import Calibration, calibration_tokens
    from hubquant.calibrate.generate import Generate

    generate = Generate(num_samples=samples, seq_len=seq_len)
    cal = Calibration(tuple(files or ()), samples, seq_len, generate=generate)
    return calibration_tokens(model, cal, report=say)


def _require_jax() -> None:
    import keras

    if keras.config.backend() != "jax":
        raise HubquantError(
            "hubquant tune differentiates the model with JAX; run it with KERAS_BACKEND=jax "
            f"(the Keras backend now is {keras.config.backend()})."
        )


def _check_counts(samples: int, seq_len: int) -> None:
    if samples < 1 or seq_len < 2:
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
