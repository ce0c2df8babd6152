"""LoRA training on a quantized model: step time and peak memory, against float
LoRA and Keras' own int4 LoRA, same model, same run.

    python bench/qlora.py [--preset P] [--rank 4] [--steps 10] [--batch 4] [--seq-len 128]

Each row trains in its own process (so peak RSS is that row's alone): the model
(the built-in synthetic default unless ``--preset``) loaded as a user of each
tool would (float, then Keras' ``quantize``; hubquant's rows streamed, never
holding the float model), ``backbone.enable_lora(rank)``, then ``--steps``
optimizer steps timed after two warm-up steps on fixed random tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROWS = ("float", "keras_int4", "hubquant_int4", "hubquant_int8")


def _model(preset: str | None):
    import keras_hub

    from hubquant import synthetic

    if preset is None:
        return synthetic.default_causal_lm()
    return keras_hub.models.CausalLM.from_preset(preset)


def _quantize(lm, row: str) -> None:
    if row == "keras_int4":
        from keras.quantizers import Int4QuantizationConfig

        lm.backbone.quantize("int4", config=Int4QuantizationConfig(block_size=128))


def _loss(result) -> float:
    """The loss from ``train_on_batch`` (a scalar, or a list led by the loss)."""
    import numpy as np

    return float(np.ravel(np.asarray(result, dtype="float64"))[0])


def run_row(row: str, args) -> dict:
    import keras
    import numpy as np

    if row.startswith("hubquant_"):  # streamed: the float model is never held whole
        import hubquant

        preset = args.preset or "synthetic-gemma"
        lm, _ = hubquant.prepare(preset, row.removeprefix("hubquant_")).quantize()
    else:
        lm = _model(args.preset)
        _quantize(lm, row)
    lm.backbone.enable_lora(args.rank)
    lm.preprocessor = None
    lm.compile(optimizer=keras.optimizers.Adam(1e-3))
    vocab = lm.backbone.token_embedding.input_dim
    ids = np.random.default_rng(0).integers(4, vocab, (args.batch, args.seq_len + 1))
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((args.batch, args.seq_len), "int32")}
    y = ids[:, 1:]
    losses = [_loss(lm.train_on_batch(x, y)) for _ in range(2)]
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(_loss(lm.train_on_batch(x, y)))
    seconds = (time.perf_counter() - start) / args.steps
    trainable = sum(int(np.prod(w.shape)) for w in lm.trainable_weights)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)
    return {
        "row": row,
        "s_per_step": seconds,
        "peak_gib": peak,
        "trainable": trainable,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args)))
        return
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")}
    results = []
    for row in ROWS:
        cmd = [sys.executable, "-W", "ignore", __file__, *sys.argv[1:], "--row", row]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    base = results[0]
    print(
        f"{'row':15s} {'s/step':>8s} {'speed x':>8s} {'peak GiB':>9s} {'memory x':>8s} "
        f"{'trainable':>10s} {'loss first->last':>18s}"
    )
    for r in results:
        print(
            f"{r['row']:15s} {r['s_per_step']:8.3f} {base['s_per_step'] / r['s_per_step']:8.2f} "
            f"{r['peak_gib']:9.2f} {r['peak_gib'] / base['peak_gib']:8.2f} {r['trainable']:10,d} "
            f"{r['loss_first']:8.3f} -> {r['loss_last']:.3f}"
        )


if __name__ == "__main__":
    main()
