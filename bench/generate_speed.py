"""Decode throughput (tokens/s) of float vs hubquant int8 and int4, and Keras' int8.

One Llama-3-shaped causal LM (synthetic trained-like weights) is built once per
case; `generate()` runs once to compile, then is timed over a fixed number of
new tokens (no early stop). `--prefill N` also times one compiled forward pass
of N tokens. Prints the device it ran on, so the same command reports CPU
figures here and GPU figures on a machine with one.

    python bench/generate_speed.py                 # ~110M parameters, 3 rounds
    python bench/generate_speed.py --shape smollm2_135m --prefill 512
    python bench/generate_speed.py --shape gemma_2b --layers 4 --cases float,int4
    python bench/generate_speed.py --dtype bfloat16 --layers 24 --hidden 2048

`--shape` takes the widths of a real preset (hidden, MLP, heads, key/value
heads, vocabulary and depth from its config; `--layers` etc. override them).
The blocks are Llama-3 blocks at those widths: every projection has the real
preset's input and output sizes except where a family's head size is not
hidden / heads (Gemma: 256), which changes the attention projections' output
width only.
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

# Real presets' widths: layers, hidden, MLP, query heads, key/value heads, vocabulary.
SHAPES = {
    "smollm2_135m": (30, 576, 1536, 9, 3, 49152),
    "gemma3_270m": (18, 640, 2048, 4, 1, 262144),
    "qwen2.5_0.5b": (24, 896, 4864, 14, 2, 151936),
    "llama3.2_1b": (16, 2048, 8192, 32, 8, 128256),
    "gemma_2b": (18, 2048, 16384, 8, 1, 256000),
    "phi3_mini": (32, 3072, 8192, 32, 32, 32064),
    "mistral_7b": (32, 4096, 14336, 32, 8, 32000),
    "llama3_8b": (32, 4096, 14336, 32, 8, 128256),
}
CASES = {
    "float": lambda m: None,
    "hubquant int8": lambda m: hubquant.quantize(m, "int8"),
    "hubquant int4 g128": lambda m: hubquant.quantize(m, "int4"),
    "keras int8": lambda m: m.backbone.quantize("int8"),
}


def apply_shape(args) -> None:
    """Fill the widths not given from ``--shape``'s preset (else the defaults)."""
    names = ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")
    values = SHAPES[args.shape] if args.shape else (12, 768, None, None, None, 32000)
    for name, value in zip(names, values, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)


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


def prefill_function(model, args):
    """A compiled forward pass of ``--prefill`` tokens; returns seconds per call."""
    backbone = model.backbone
    inputs = {
        "token_ids": keras.ops.ones((args.batch, args.prefill), "int32"),
        "padding_mask": keras.ops.ones((args.batch, args.prefill), "bool"),
    }
    forward = jax.jit(lambda t, n, x: backbone.stateless_call(t, n, x)[0])
    trainable = [v.value for v in backbone.trainable_variables]
    other = [v.value for v in backbone.non_trainable_variables]

    def seconds() -> float:
        start = time.perf_counter()
        forward(trainable, other, inputs).block_until_ready()
        return time.perf_counter() - start

    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="a real preset's widths")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--intermediate", type=int, help="MLP width (default ~8/3 hidden)")
    parser.add_argument("--heads", type=int, help="query heads (default hidden / 64)")
    parser.add_argument("--kv-heads", type=int, help="key/value heads (default: see head_counts)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per case (best kept)")
    parser.add_argument("--prefill", type=int, default=0, help="also time N-token forwards")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    args = parser.parse_args()
    apply_shape(args)
    names = args.cases.split(",")
    if unknown := set(names) - set(CASES):
        raise SystemExit(f"--cases: unknown {sorted(unknown)}; known: {', '.join(CASES)}")

    device = jax.devices()[0]
    heads, kv_heads = head_counts(args)
    print(
        f"device: {device.platform} ({device.device_kind}); Keras backend "
        f"{keras.config.backend()}; Llama-3-shaped ({args.shape or 'custom'}: "
        f"{args.layers} layers, hidden {args.hidden}, MLP {args.intermediate or 'default'}, "
        f"heads {heads}/{kv_heads}, vocabulary {args.vocab}), {args.dtype}, "
        f"batch {args.batch}, {args.new_tokens} new tokens"
    )
    models, prefills = {}, {}
    for name in names:
        models[name] = build(args)
        CASES[name](models[name])
        tokens_per_second(models[name], args)  # compile
        if args.prefill:
            prefills[name] = prefill_function(models[name], args)
            prefills[name]()  # compile
    # Rounds in turn, best of each: other load on the machine hits every case alike.
    best = dict.fromkeys(names, 0.0)
    fastest = dict.fromkeys(prefills, float("inf"))
    for _ in range(args.rounds):
        for name, model in models.items():
            best[name] = max(best[name], tokens_per_second(model, args))
            if name in prefills:
                fastest[name] = min(fastest[name], prefills[name]())
    base = names[0]
    print(f"{'case':20s} {'tokens/s':>9s} {'x ' + base:>10s}", end="")
    print(f" {'prefill ' + str(args.prefill) + ' s':>14s} {'x ' + base:>10s}" if prefills else "")
    for name, speed in best.items():
        print(f"{name:20s} {speed:9.1f} {speed / best[base]:10.2f}", end="")
        if prefills:
            print(f" {fastest[name]:14.3f} {fastest[base] / fastest[name]:10.2f}", end="")
        print()


if __name__ == "__main__":
    main()
