"""How close a merged LoRA model stays: KL to (float + adapter) of ``merge_lora``
against quantizing the merged float model afresh with the same config.

    python bench/lora_merge.py FOLDER --text EVAL.txt [--calibration CAL.txt]
        [--configs int4,int8] [--rank 8] [--seeds 3]

The quantized model is streamed from FOLDER, adapters go on KerasHub's default
targets with B drawn at each ``--b-std``, and the reference is the float model
with each adapter's kernel added to its own. A fresh quantization's KL moves by
several percent from one adapter to the next (its rounding errors land
elsewhere), so each row draws ``--seeds`` adapters and compares mean KLs.
``adapted`` is the model before merging (quantized product plus ``x A B``): it
keeps the first rounding's error, which no merge without the float weights can
undo, so it is the floor of ``merged``. With ``--calibration`` (a text other
than the evaluation text) a last column merges with calibration
(``merge_lora(model, calibration=...)``: codes chosen on each layer's grid by
GPTQ's sweep). ``from float`` merges with the float weights
(``merge_lora(model, float_weights=FOLDER)``: each adapted layer quantized
afresh from ``W + A B`` by its own rule), which a fresh quantization bounds.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import zlib

import keras
import keras_hub
import numpy as np

import hubquant
from hubquant.paths import layer_at
from hubquant.text import token_ids


def _logits(model, x: dict, batch: int = 2) -> np.ndarray:
    parts = []
    for i in range(0, len(x["token_ids"]), batch):
        hidden = model.backbone({k: v[i : i + batch] for k, v in x.items()})
        parts.append(np.asarray(model.backbone.token_embedding(hidden, reverse=True), np.float32))
    return np.concatenate(parts)


def _kl(p, q) -> float:
    p = np.asarray(keras.ops.log_softmax(p, -1))
    q = np.asarray(keras.ops.log_softmax(q, -1))
    return float(np.mean(np.sum(np.exp(p) * (p - q), -1)))


@functools.cache
def _quantized(folder: str, config: str, calibration: bytes | None) -> str:
    """A folder holding ``folder`` quantized by ``config`` (calibrated configs
    on ``calibration``, int32 token ids as bytes), made once per run."""
    ids = None if calibration is None else np.frombuffer(calibration, "int32").reshape(32, -1)
    lm, _ = hubquant.prepare(folder, config).quantize(calibration=ids)
    out = tempfile.mkdtemp(prefix="lora_merge_")
    hubquant.save(lm, out)
    return out


def _adapted(folder, config: str, rank: int, b_std: float, seed: int, calibration=None):
    """The quantized model with adapters (B drawn per layer, seeded by its path)."""
    key = None if calibration is None else calibration.tobytes()
    lm = hubquant.load(_quantized(folder, config, key))
    keras.utils.set_random_seed(seed)
    lm.backbone.enable_lora(rank)
    for attr in lm.backbone.hubquant_plan.layers():
        layer = layer_at(lm.backbone, attr)
        if getattr(layer, "lora_enabled", False):
            rng = np.random.default_rng((seed, zlib.crc32(attr.encode())))
            layer.lora_kernel_b.assign(rng.normal(0, b_std, layer.lora_kernel_b.shape))
    return lm


def one_row(folder, config, x, rank, b_std, calibration, seed) -> dict:
    lm = _adapted(folder, config, rank, b_std, seed, calibration)
    reference = keras_hub.models.CausalLM.from_preset(folder)
    for attr in lm.backbone.hubquant_plan.layers():
        layer = layer_at(lm.backbone, attr)
        if getattr(layer, "lora_enabled", False):
            target = layer_at(reference.backbone, attr)
            target._kernel.assign(target._kernel + layer.lora_delta())
    want = _logits(reference, x)
    row = {"adapted": _kl(want, _logits(lm, x))}  # before merging: the floor of a merge
    hubquant.merge_lora(lm)
    row["merged"] = _kl(want, _logits(lm, x))
    if calibration is not None:
        lm = _adapted(folder, config, rank, b_std, seed, calibration)
        hubquant.merge_lora(lm, calibration=calibration)
        row["calibrated"] = _kl(want, _logits(lm, x))
    lm = _adapted(folder, config, rank, b_std, seed, calibration)
    hubquant.merge_lora(lm, calibration=calibration, float_weights=folder)
    row["float"] = _kl(want, _logits(lm, x))
    hubquant.apply_plan(reference, hubquant.plan_for(reference, config), calibration=calibration)
    row["fresh"] = _kl(want, _logits(reference, x))
    return row


def _windows(tokenizer, folder: str, path: str, count: int, seq_len: int) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        ids = token_ids(tokenizer, f.read(), folder)
    return ids[: count * seq_len].reshape(count, seq_len).astype("int32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--text", required=True)
    parser.add_argument("--calibration", help="text for the calibrated merge (not --text)")
    parser.add_argument("--configs", default="int4,int8")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--b-std", default="0.002,0.01")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3, help="adapters drawn per row")
    args = parser.parse_args()
    tokenizer = keras_hub.models.CausalLM.from_preset(args.folder).preprocessor.tokenizer
    ids = _windows(tokenizer, args.folder, args.text, args.windows, args.seq_len)
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    calibration = None
    if args.calibration:
        calibration = _windows(tokenizer, args.folder, args.calibration, 32, 256)
    print(
        f"{'config':8s} {'B std':>7s} {'KL fresh':>10s} {'adapted':>16s} {'merged':>16s} "
        f"{'calibrated':>16s} {'from float':>16s}"
    )
    for config in args.configs.split(","):
        for b_std in (float(s) for s in args.b_std.split(",")):
            rows = [
                one_row(args.folder, config, x, args.rank, b_std, calibration, seed)
                for seed in range(args.seeds)
            ]
            r = {k: float(np.mean([row[k] for row in rows])) for k in rows[0]}
            cells = [
                f"{r[k]:8.4f} ({r[k] / r['fresh']:.3f}x)" if k in r else f"{'-':>16s}"
                for k in ("adapted", "merged", "calibrated", "float")
            ]
            spread = " ".join(
                f"{k} {min(ratios):.3f}-{max(ratios):.3f}x"
                for k in ("merged", "calibrated", "float")
                if k in r
                for ratios in [[row[k] / row["fresh"] for row in rows]]
            )
            line = f"{config:8s} {b_std:7.3f} {r['fresh']:10.4f} {' '.join(cells)}"
            print(f"{line}  per adapter: {spread}", flush=True)


if __name__ == "__main__":
    main()
