"""What quantization costs a real pretrained LLM: every rule judged by the model's outputs.

One run loads a real causal LM (a Hugging Face or KerasHub folder; set one up with
bench/real_model.py) and prints, for float, Keras' own int8 and int4 and each hubquant
config: perplexity on held-out text, mean KL(float || quantized) of the next-token
distributions, top-1 agreement with float, bytes of the weights and seconds to
quantize. Evaluation text and calibration text are different files. Text is tokenized
with the folder's own ``tokenizer.json`` (the ``tokenizers`` package) when it has one:
KerasHub's tokenizer class does not always split a non-native vocabulary the same way.
Each window opens with the model's start ids (Gemma's ``<bos>``), as ``hubquant eval``
cuts them.

    python bench/fidelity.py FOLDER --text EVAL.txt --calibration CALIB.txt
    python bench/fidelity.py FOLDER --text EVAL.txt --rows int4,int4_minmax   # a subset
    python bench/fidelity.py FOLDER --text EVAL.txt --config mine.yaml --rows mine

``--config FILE`` (repeatable) adds a row named after the file; without a
``calibration:`` section of its own it calibrates on ``--calibration``.

Nothing is installed or downloaded. On 2 cores, SmolLM2-135M: ~1 min per RTN row,
a few minutes per calibrated row (self-generated calibration, ``*_selfgen`` and
``*_shipped``, adds the minutes of sampling the text; its seconds include them).
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import hubquant  # noqa: E402  (first hubquant import quiets TensorFlow)
from hubquant.config import load_config, parse_config  # noqa: E402

# hubquant rows: name -> config text ({calibration} is the calibration section).
_TABLE = "  - match: {role: 'embed*'}\n    mode: int8\n  - match: {role: lm_head}\n    mode: int8\n"
HUBQUANT_ROWS = {
    "int8": "configs/int8.yaml",
    "int4": "configs/int4.yaml",
    "mixed": "configs/mixed.yaml",
    "int4_sym": "default: {mode: int4, group_size: 128, symmetric: true}\nrules:\n" + _TABLE,
    "int4_gptq": "default: {mode: int4, group_size: 128, algorithm: gptq}\nrules:\n"
    + _TABLE
    + "{calibration}",
    "int4_awq": "default: {mode: int4, group_size: 128, algorithm: awq}\nrules:\n"
    + _TABLE
    + "{calibration}",
    "int4_imatrix": "default: {mode: int4, group_size: 128, algorithm: imatrix}\nrules:\n"
    + _TABLE
    + "{calibration}",
    # int4_gptq on text the model generates itself, as many tokens as --calibration gives
    "int4_gptq_selfgen": "default: {mode: int4, group_size: 128, algorithm: gptq}\nrules:\n"
    + _TABLE
    + "{generate}",
    "int4_gptq_shipped": "configs/int4_gptq.yaml",  # self-generated, 256 x 64 tokens
    "int4_minmax": "configs/int4.yaml",  # int4.yaml with plain min/max: no clip search
}
PLAIN_MINMAX = ("int4_minmax",)
KERAS_ROWS = ("keras_int8", "keras_int4")


def load_model(folder: str):
    import keras_hub

    model = keras_hub.models.CausalLM.from_preset(folder, dtype="float32")
    object.__setattr__(model, "hubquant_source", folder)  # calibration: its own tokenizer
    return model


def eval_windows(folder: str, model, text: str, seq_len: int, count: int) -> np.ndarray:
    """``count`` consecutive windows of ``seq_len + 1`` tokens, cut as ``hubquant
    eval`` cuts them: the folder's own tokenizer, the model's start ids first."""
    from hubquant.evaluate import token_windows
    from hubquant.text import start_ids

    head = start_ids(model.preprocessor, folder)
    return token_windows(model.preprocessor.tokenizer, text, seq_len, count, folder, head)


def weight_bytes(model) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.backbone.weights)


def hubquant_row(folder: str, name: str, calibration: str, generate: str):
    model = load_model(folder)
    spec = HUBQUANT_ROWS[name]
    if spec.startswith("file:"):
        path = Path(spec[len("file:") :])
        text = path.read_text(encoding="utf-8")
        if parse_config(text, path.name).calibration is None and calibration:
            text = text.rstrip() + "\n" + calibration
        config = parse_config(text, path.name)
    elif spec.startswith("configs/"):
        config = load_config(Path(__file__).parent.parent / spec)
    else:
        text = spec.replace("{calibration}", calibration).replace("{generate}", generate)
        config = parse_config(text, f"{name}.yaml")
    ratios = hubquant.quantizers.CLIP_RATIOS
    if name in PLAIN_MINMAX:  # the one ratio 1.0: each group's own min and max
        hubquant.quantizers.CLIP_RATIOS = (1.0,)
    start = time.perf_counter()
    try:
        hubquant.apply_plan(model, hubquant.plan_for(model, config))
    finally:
        hubquant.quantizers.CLIP_RATIOS = ratios
    return model, time.perf_counter() - start


def keras_row(folder: str, name: str):
    from keras.quantizers import Int4QuantizationConfig

    # Keras cannot quantize a task holding a tokenizer: the same backbone, bare.
    loaded = load_model(folder)
    model = type(loaded)(backbone=loaded.backbone, preprocessor=None)
    collect, gc.collect = gc.collect, (lambda *a: 0)  # Keras collects per variable
    start = time.perf_counter()
    try:
        if name == "keras_int8":
            model.quantize("int8")
        else:
            model.quantize("int4", config=Int4QuantizationConfig(block_size=128))
    finally:
        gc.collect = collect
    return model, time.perf_counter() - start


BATCH = 4


def log_probs(model, windows: np.ndarray):
    """Next-token log-probabilities (float32), batch by batch."""
    for start in range(0, len(windows), BATCH):
        batch = windows[start : start + BATCH, :-1]
        logits = model({"token_ids": batch, "padding_mask": np.ones_like(batch)})
        x = np.asarray(keras.ops.convert_to_numpy(logits), np.float64)
        x -= x.max(-1, keepdims=True)
        yield (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def scores(reference: list, model, windows: np.ndarray) -> tuple[float, float, float]:
    """(perplexity, mean KL(float || model), top-1 agreement) against cached float."""
    nll, kl, agree = [], [], []
    for i, logp in enumerate(log_probs(model, windows)):
        ref, targets = reference[i], windows[i * BATCH : (i + 1) * BATCH, 1:]
        nll.append(-np.take_along_axis(logp, targets[..., None], -1).ravel())
        kl.append(np.sum(np.exp(ref) * (ref - logp), -1, dtype=np.float64).ravel())
        agree.append((ref.argmax(-1) == logp.argmax(-1)).ravel())
    nll, kl, agree = (np.concatenate(x) for x in (nll, kl, agree))
    return float(np.exp(nll.mean())), float(max(kl.mean(), 0.0)), float(agree.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--text", required=True, help="evaluation text")
    parser.add_argument("--calibration", help="calibration text (a different text)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--cal-samples", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0, help="of *_selfgen rows")
    parser.add_argument("--rows", help="comma list of rows (default: all that can run)")
    parser.add_argument("--config", action="append", default=[], help="a config file as a row")
    args = parser.parse_args()

    reference = load_model(args.folder)
    text = Path(args.text).read_text(encoding="utf-8")
    windows = eval_windows(args.folder, reference, text, args.seq_len, args.windows)
    calibration = ""
    if args.calibration:
        if Path(args.calibration).resolve() == Path(args.text).resolve():
            raise SystemExit("calibration and evaluation must be different texts")
        calibration = (
            f"calibration: {{files: ['{args.calibration}'], num_samples: {args.cal_samples}, "
            f"seq_len: {args.seq_len}}}\n"
        )
    generate = (
        f"calibration: {{generate: {{num_samples: {args.cal_samples}, seq_len: {args.seq_len}, "
        f"temperature: {args.temperature}}}}}\n"
    )
    for path in args.config:
        HUBQUANT_ROWS[Path(path).stem] = "file:" + path
    names = [*KERAS_ROWS, *HUBQUANT_ROWS]
    if not calibration:
        names = [n for n in names if "{calibration}" not in HUBQUANT_ROWS.get(n, "")]
    if args.rows:
        names = args.rows.split(",")
    print(
        f"{Path(args.folder).name}: {reference.backbone.count_params():,} parameters; "
        f"{len(windows)} windows x {args.seq_len} tokens of {Path(args.text).name}; "
        f"calibration {Path(args.calibration).name if args.calibration else 'none'}"
    )
    print(
        f"{'row':14s} {'ppl':>9s} {'vs float':>9s} {'KL':>8s} {'top-1':>7s} {'MiB':>7s} {'sec':>6s}"
    )
    cached = list(log_probs(reference, windows))
    float_ppl = None
    for name in ["float", *names]:
        if name == "float":
            model, seconds = reference, 0.0
        elif name in KERAS_ROWS:
            model, seconds = keras_row(args.folder, name)
        else:
            model, seconds = hubquant_row(args.folder, name, calibration, generate)
        ppl, kl, top1 = scores(cached, model, windows)
        float_ppl = float_ppl or ppl
        print(
            f"{name:14s} {ppl:9.3f} {ppl / float_ppl - 1:+9.2%} {kl:8.4f} {top1:7.2%} "
            f"{weight_bytes(model) / 2**20:7.1f} {seconds:6.1f}",
            flush=True,
        )
        del model
        gc.collect()


if __name__ == "__main__":
    main()
