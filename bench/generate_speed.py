"""Decode throughput (tokens/s) of float vs hubquant int8 and int4, and Keras' int8.

One Llama-3-shaped causal LM (synthetic trained-like weights) is built once per
case; `generate()` runs once to compile, then is timed over a fixed number of
new tokens (no early stop). Prints the device it ran on, so the same command
reports CPU figures here and GPU figures on a machine with one.

    python bench/generate_speed.py                 # ~110M parameters, 3 rounds
    python bench/generate_speed.py --dtype bfloat16 --layers 24 --hidden 2048
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import keras_hub

import hubquant
from hubquant.synthetic import llama3_tokenizer, make_trained_like


def head_counts(args) -> tuple[int, int]:
    """Query and key/value heads: as given, else heads of 64 and the largest
    divisor of the query heads up to hidden / 256 (9 and 1 for hidden 576;
    SmolLM2-135M has 9 and 3: --kv-heads 3)."""
    heads = args.heads or max(1, args.hidden // 64)
    if args.hidden % heads:
        raise SystemExit(f"--hidden {args.hidden} is not a multiple of {heads} heads")
    kv = args.kv_heads or max(
        d for d in range(1, heads + 1) if heads % d == 0 and d <= max(1, args.hidden // 256)
    )
    if heads % kv:
        raise SystemExit(f"{heads} query heads are not a multiple of {kv} key/value heads")
    return heads, kv


def build(args):
    heads, kv_heads = head_counts(args)
    keras.utils.set_random_seed(0)
    tokenizer = llama3_tokenizer()
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=args.vocab,
        num_layers=args.layers,
        num_query_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_dim=args.hidden,
        intermediate_dim=args.intermediate or args.hidden * 8 // 3 // 64 * 64,
        dtype=args.dtype,
    )
    make_trained_like(backbone, seed=0)
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(
        tokenizer, sequence_length=args.new_tokens + 8
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


def tokens_per_second(model, args) -> float:
    prompt = {
        "token_ids": keras.ops.ones((args.batch, args.new_tokens + 8), "int32"),
        "padding_mask": keras.ops.concatenate(
            [
                keras.ops.ones((args.batch, 8), "bool"),
                keras.ops.zeros((args.batch, args.new_tokens), "bool"),
            ],
            axis=1,
        ),
    }
    model.preprocessor = None
    start = time.perf_counter()
    model.generate(prompt, stop_token_ids=None)
    return args.batch * args.new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--intermediate", type=int, help="MLP width (default ~8/3 hidden)")
    parser.add_argument("--heads", type=int, help="query heads (default hidden / 64)")
    parser.add_argument("--kv-heads", type=int, help="key/value heads (default: see head_counts)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per case (best kept)")
    args = parser.parse_args()

    device = jax.devices()[0]
    params = build(args).count_params()
    print(
        f"device: {device.platform} ({device.device_kind}); Keras backend "
        f"{keras.config.backend()}; Llama-3-shaped, {params / 1e6:.0f}M parameters, "
        f"{args.dtype}, batch {args.batch}, {args.new_tokens} new tokens"
    )
    cases = {
        "float": lambda m: None,
        "hubquant int8": lambda m: hubquant.quantize(m, "int8"),
        "hubquant int4 g128": lambda m: hubquant.quantize(m, "int4"),
        "keras int8": lambda m: m.backbone.quantize("int8"),
    }
    models = {}
    for name, quantize in cases.items():
        models[name] = build(args)
        quantize(models[name])
        tokens_per_second(models[name], args)  # compile
    # Rounds in turn, best of each: other load on the machine hits every case alike.
    best = dict.fromkeys(cases, 0.0)
    for _ in range(args.rounds):
        for name, model in models.items():
            best[name] = max(best[name], tokens_per_second(model, args))
    print(f"{'case':20s} {'tokens/s':>9s} {'x float':>8s}")
    for name, speed in best.items():
        print(f"{name:20s} {speed:9.1f} {speed / best['float']:8.2f}")


if __name__ == "__main__":
    main()
