"""Does tune's damage estimate rank configs as their real outputs do?

On a real model (a folder from bench/real_model.py or bench/real_gemma3.py), one
run computes tune's damage table (Fisher diagonal on calibration text), then for
several configs (shipped ones, hand mixes, and tune's own choices at several
budgets) prints the predicted KL (the sum of the chosen damages), the measured
KL to float and top-1 agreement on held-out evaluation text, and the bytes;
then the rank correlation of predicted against measured.

    python bench/tune_check.py FOLDER --text EVAL.txt --calibration CALIB.txt
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

import hubquant  # noqa: E402
from hubquant.config import load_config, parse_config  # noqa: E402

CONFIGS = Path(__file__).parent.parent / "configs"
# Hand mixes of the kind the tune issue tried by hand (no calibration).
HAND = {
    "table_g32_rest_int8": "default: {mode: int8}\nrules:\n"
    "  - match: {role: 'embed*'}\n    mode: int4\n    group_size: 32\n",
    "int4_g64": "default: {mode: int4, group_size: 64}\nrules:\n"
    "  - match: {role: 'embed*'}\n    mode: int8\n",
}
BUDGETS = (0.14, 0.16, 0.1875, 0.22, 0.25)


def main() -> None:
    import fidelity  # bench/fidelity.py: the same loading and windows

    from hubquant.tune import tune
    from hubquant.tune.allocate import allocate
    from hubquant.tune.budget import parse_budget
    from hubquant.tune.candidates import parse_candidates
    from hubquant.tune.writer import config_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--text", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--windows", type=int, default=16)
    args = parser.parse_args()

    reference = fidelity.load_model(args.folder)
    text = Path(args.text).read_text(encoding="utf-8")
    windows = fidelity.eval_windows(args.folder, reference, text, 256, args.windows)
    calibration = _calibration(args, reference)
    start = time.perf_counter()
    every = parse_candidates(None)
    table = tune(reference, parse_budget("0.25", None), calibration, every, report=lambda *a: None)
    print(
        f"damage table: {len(table.entries)} layers x {len(every)} candidates, "
        f"{time.perf_counter() - start:.0f} s"
    )
    configs = {name: load_config(CONFIGS / f"{name}.yaml") for name in ("int4", "mixed", "int8")}
    configs.update({name: parse_config(t, name) for name, t in HAND.items()})
    for fraction in BUDGETS:
        chosen = allocate(table.damage, table.sizes, int(fraction * table.float_bytes))
        text = config_text(table.entries, [every[i] for i in chosen], [])
        configs[f"tuned_{fraction}"] = parse_config(text, f"tuned {fraction}")
    cached = list(fidelity.log_probs(reference, windows))
    print(f"{'config':22s} {'predicted':>10s} {'KL':>8s} {'top-1':>7s} {'of float':>9s}")
    predicted, measured = [], []
    for name, config in configs.items():
        model = fidelity.load_model(args.folder)
        plan = hubquant.plan_for(model, config)
        guess = _predicted(table, plan)
        hubquant.apply_plan(model, plan)
        _, kl, top1 = fidelity.scores(cached, model, windows)
        totals = plan.totals()
        print(
            f"{name:22s} {guess:10.4f} {kl:8.4f} {top1:7.2%} "
            f"{totals['bytes_after'] / totals['bytes_before']:9.3f}",
            flush=True,
        )
        predicted.append(guess)
        measured.append(kl)
    print(
        f"Spearman rank correlation, predicted vs measured KL: {_spearman(predicted, measured):.3f}"
    )


def _calibration(args, model) -> np.ndarray:
    from hubquant.calibrate.calibration import Calibration, calibration_tokens

    cal = Calibration((args.calibration,), args.samples, args.seq_len)
    return calibration_tokens(model, cal, report=lambda *a: None)


def _predicted(table, plan) -> float:
    """Sum of the table's damages for the candidate ``plan`` gives each layer."""
    index = {(c.mode, c.group_size, c.symmetric): i for i, c in enumerate(table.candidates)}
    by_path = {(e.path, e.role): e for e in plan.entries}
    total = 0.0
    for row, entry in enumerate(table.entries):
        chosen = by_path[(entry.path, entry.role)]
        key = (chosen.mode, chosen.group_size, chosen.symmetric)
        if chosen.mode == "int8":
            key = ("int8", -1, True)
        if chosen.mode == "none":
            key = ("none", -1, True)
        total += float(table.damage[row, index[key]])
    return total


def _spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(x)) for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


if __name__ == "__main__":
    main()
