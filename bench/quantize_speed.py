"""Time hubquant's quantize step against Keras' own `model.quantize()`.

Both start from the same float Llama-3-shaped backbone in memory and end with a
quantized model in memory (loading and saving excluded, compilation included).
Prints seconds for each and the ratio Keras / hubquant. The first run on a
machine also compiles hubquant's int4 programs (kept in ``$HUBQUANT_CACHE``,
loaded by later runs); a case that did says so.

    python bench/quantize_speed.py              # ~100M parameters
    python bench/quantize_speed.py --layers 2   # a quick look
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")  # as hubquant's own default (README)

import keras
import keras_hub
from keras.quantizers import Int4QuantizationConfig, Int8QuantizationConfig

import hubquant  # first: it quiets TensorFlow's start-up chatter
from hubquant import programs
from hubquant.synthetic import make_trained_like

# Keras' quantize warns once per layer it leaves alone (norms, dropout, ...).
warnings.filterwarnings("ignore", message="Layer .* does not have a `quantize` method")


def build(args) -> keras_hub.models.Llama3Backbone:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=args.vocab,
        num_layers=args.layers,
        num_query_heads=12,
        num_key_value_heads=4,
        hidden_dim=args.hidden,
        intermediate_dim=args.intermediate,
        tie_word_embeddings=True,
    )
    make_trained_like(backbone, seed=0)
    return backbone


def time_quantize(args, quantize) -> float:
    """Seconds for ``quantize(model)`` on a freshly built float model."""
    model = build(args)
    start = time.perf_counter()
    quantize(model)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()

    params = build(args).count_params()
    print(
        f"Llama-3-shaped backbone: {params / 1e6:.1f}M parameters, {args.layers} blocks, "
        f"Keras backend {keras.config.backend()}"
    )
    cases = [
        ("int8", "int8", "int8", None),
        (
            "int8 (Keras weight-only)",
            "int8",
            "int8",
            Int8QuantizationConfig(activation_quantizer=None),
        ),
        ("int4 g128", "int4", "int4", Int4QuantizationConfig(block_size=128)),
    ]
    print(f"{'case':28s} {'hubquant s':>11s} {'keras s':>9s} {'keras/hubquant':>15s}")
    for name, ours_config, keras_mode, keras_config in cases:
        kept = programs.kept()
        ours = time_quantize(args, lambda m, c=ours_config: hubquant.quantize(m, c))
        compiled = programs.kept() - kept
        theirs = time_quantize(
            args, lambda m, mode=keras_mode, c=keras_config: m.quantize(mode, config=c)
        )
        note = f"  (compiled {compiled} programs: a first run here)" if compiled else ""
        print(f"{name:28s} {ours:11.2f} {theirs:9.2f} {theirs / ours:14.1f}x{note}", flush=True)


if __name__ == "__main__":
    main()
