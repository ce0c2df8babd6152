"""hubquant GPTQ (and AWQ, RTN) against Keras' own GPTQ on the same model and data.

A synthetic Llama 3 (trained-like weights, correlated activations with outlier
channels; ~25M parameters by default) is quantized int4 (group 128,
asymmetric, transformer blocks only: Keras' GPTQ leaves the token table float)
from the same calibration token windows, cut from this repository's README
with the model's own tokenizer. Prints quantize seconds (compilation
included), the ratio Keras / hubquant, and perplexity, KL(float || quantized)
and top-1 agreement on held-out windows of docs/format.md.

    python bench/calibrated.py                  # ~25M parameters, a few minutes
    python bench/calibrated.py --layers 2 --skip-keras   # a quick look
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
from pathlib import Path

import keras
import numpy as np

import hubquant  # first: it quiets TensorFlow's start-up chatter
from hubquant import evaluate, synthetic
from hubquant.calibrate.calibration import Calibration, calibration_tokens
from hubquant.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


def build(args):
    lm = synthetic.llama3_causal_lm(
        seed=0,
        num_layers=args.layers,
        hidden_dim=args.hidden,
        intermediate_dim=args.intermediate,
        num_query_heads=8,
        num_key_value_heads=4,
    )
    synthetic.add_activation_outliers(lm.backbone, seed=0)
    return lm


def hubquant_run(args, algorithm: str, tokens: np.ndarray):
    lm = build(args)
    config = parse_config(
        f"default: {{mode: int4, group_size: {args.group_size}, algorithm: {algorithm}}}\n"
        "rules:\n  - match: {role: 'embed*'}\n    mode: none\n"
        "  - match: {role: lm_head}\n    mode: none\n",
        "bench.yaml",
    )
    start = time.perf_counter()
    hubquant.apply_plan(lm, hubquant.plan_for(lm, config), calibration=tokens)
    return lm, time.perf_counter() - start


def keras_run(args, tokens: np.ndarray):
    import keras_hub

    float_lm = build(args)
    tokenizer = float_lm.preprocessor.tokenizer
    # Keras cannot quantize a task holding a tokenizer: the same backbone, bare.
    lm = keras_hub.models.Llama3CausalLM(backbone=float_lm.backbone, preprocessor=None)
    config = keras.quantizers.GPTQConfig(
        dataset=tokens,
        tokenizer=tokenizer,
        weight_bits=4,
        num_samples=len(tokens),
        sequence_length=tokens.shape[1],
        hessian_damping=0.01,
        group_size=args.group_size,
        symmetric=False,
    )
    start = time.perf_counter()
    lm.quantize("gptq", config=config)
    return lm, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--skip-keras", action="store_true")
    args = parser.parse_args()

    reference = build(args)
    tokenizer = reference.preprocessor.tokenizer
    cal = Calibration((str(ROOT / "README.md"),), args.samples, args.seq_len, seed=0)
    tokens = calibration_tokens(reference, cal)
    text = (ROOT / "docs" / "format.md").read_text(encoding="utf-8")
    windows = evaluate.token_windows(tokenizer, text, seq_len=128, windows=16)
    print(
        f"synthetic Llama 3: {reference.backbone.count_params() / 1e6:.1f}M parameters, "
        f"{args.layers} blocks; int4 g{args.group_size} asymmetric; calibration "
        f"{args.samples} x {args.seq_len} tokens; Keras backend {keras.config.backend()}"
    )
    runs = [(f"hubquant {a}", *hubquant_run(args, a, tokens)) for a in ("rtn", "gptq", "awq")]
    if not args.skip_keras:
        runs.append(("keras gptq", *keras_run(args, tokens)))
    report(reference, runs, windows)


def report(reference, runs, windows) -> None:
    hub_gptq = next(s for name, _, s in runs if name == "hubquant gptq")
    print(
        f"{'':16s} {'seconds':>9s} {'vs hq gptq':>10s} {'perplexity':>11s} "
        f"{'(float)':>9s} {'KL':>9s} {'top-1':>7s}"
    )
    for name, lm, seconds in runs:
        c = evaluate.compare(reference, lm, windows)
        print(
            f"{name:16s} {seconds:9.1f} {seconds / hub_gptq:9.2f}x {c.perplexity_quantized:11.4f} "
            f"{c.perplexity_float:9.4f} {c.kl_divergence:9.5f} {c.top1_agreement:7.2%}"
        )


if __name__ == "__main__":
    main()
