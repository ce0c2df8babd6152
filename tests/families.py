"""Tiny trained-like backbones for the KerasHub families beyond Gemma and Llama.

Same idea as :mod:`hubquant.synthetic`: real KerasHub architectures at toy
sizes, fixed seeds, weights given trained-like structure by
``synthetic.make_trained_like``. Backbones only (no tokenizers): they exist to
check that each family's recipe fits and that quantization behaves.
"""

from __future__ import annotations

import functools

import keras
import keras_hub
import numpy as np

from hubquant.synthetic import make_trained_like, sentencepiece_proto

VOCAB = 256
# One set of matrix shapes for every family (JAX compiles each op once per
# shape, so shared shapes keep the tests fast). The hidden size is wide enough,
# and the position tables short enough, that the tables and rank-2 attention
# biases hubquant leaves float stay a realistic share of the parameters (under
# 1 %, as in GPT-2 small at 0.7 % and BERT-base at 0.4 %).
_SIZES = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=128, intermediate_dim=320)
_DECODER = dict(_SIZES, num_query_heads=4, num_key_value_heads=2)
_ENCODER = dict(_SIZES, num_heads=4, dropout=0.0, max_sequence_length=16)


def _build(cls, seed: int, **config):
    keras.utils.set_random_seed(seed)
    backbone = cls(**config)
    make_trained_like(backbone, seed)
    return backbone


def gemma3_backbone(seed: int = 0, **dims):
    """Text-only Gemma 3 (no vision encoder), tied token table."""
    config = dict(
        _DECODER,
        image_size=16,
        head_dim=32,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        vision_encoder=None,
    )
    return _build(keras_hub.models.Gemma3Backbone, seed, **{**config, **dims})


def gemma3_causal_lm(seed: int = 0):
    """A tiny text-only Gemma3CausalLM with a SentencePiece tokenizer (which
    must hold Gemma 3's image and turn tokens) and its preprocessor."""
    symbols = ("<start_of_image>", "<end_of_image>", "<img>", "<start_of_turn>", "<end_of_turn>")
    tokenizer = keras_hub.models.Gemma3Tokenizer(proto=sentencepiece_proto(384, symbols))
    preprocessor = keras_hub.models.Gemma3CausalLMPreprocessor(
        tokenizer=tokenizer, image_converter=None, sequence_length=64
    )
    backbone = gemma3_backbone(seed, vocabulary_size=tokenizer.vocabulary_size())
    return keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=preprocessor)


def mistral_backbone(seed: int = 0, **dims):
    config = dict(_DECODER, sliding_window=16)
    return _build(keras_hub.models.MistralBackbone, seed, **{**config, **dims})


def qwen_backbone(seed: int = 0, **dims):
    """Qwen2 with an untied LM head (the 7B-and-up layout)."""
    config = dict(_DECODER, tie_word_embeddings=False)
    return _build(keras_hub.models.QwenBackbone, seed, **{**config, **dims})


def qwen3_backbone(seed: int = 0, **dims):
    """Qwen3 with a tied LM head (the small-model layout)."""
    config = dict(_DECODER, head_dim=32, tie_word_embeddings=True)
    return _build(keras_hub.models.Qwen3Backbone, seed, **{**config, **dims})


def phi3_backbone(seed: int = 0, **dims):
    config = dict(_DECODER, max_sequence_length=64, pretraining_sequence_length=64)
    return _build(keras_hub.models.Phi3Backbone, seed, **{**config, **dims})


def gpt2_backbone(seed: int = 0, **dims):
    config = dict(_ENCODER)
    return _build(keras_hub.models.GPT2Backbone, seed, **{**config, **dims})


def smollm3_backbone(seed: int = 0, **dims):
    """SmolLM3 with NoPE on the last layer, as the real model does every 4th."""
    layers = dims.get("num_layers", _SIZES["num_layers"])
    config = dict(
        _SIZES,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=False,
        attention_dropout=0.0,
        rope_layer_enabled_list=[True] * (layers - 1) + [False],
        layer_types=["full_attention"] * layers,
        mlp_bias=False,
        layer_norm_epsilon=1e-6,
        max_position_embeddings=64,
        rope_theta=10000.0,
        partial_rotary_factor=1.0,
    )
    return _build(keras_hub.models.SmolLM3Backbone, seed, **{**config, **dims})


def bert_backbone(seed: int = 0, **dims):
    return _build(keras_hub.models.BertBackbone, seed, **{**_ENCODER, **dims})


def roberta_backbone(seed: int = 0, **dims):
    return _build(keras_hub.models.RobertaBackbone, seed, **{**_ENCODER, **dims})


def xlm_roberta_backbone(seed: int = 0, **dims):
    return _build(keras_hub.models.XLMRobertaBackbone, seed, **{**_ENCODER, **dims})


def distil_bert_backbone(seed: int = 0, **dims):
    return _build(keras_hub.models.DistilBertBackbone, seed, **{**_ENCODER, **dims})


_MOE = dict(_DECODER, moe_intermediate_dim=64, num_experts=4, top_k=2)


def mixtral_backbone(seed: int = 0, **dims):
    config = {**_DECODER, "num_experts": 4, **dims}
    return _build(keras_hub.models.MixtralBackbone, seed, **config)


def qwen_moe_backbone(seed: int = 0, **dims):
    config = {**_MOE, "shared_expert_intermediate_dim": 128, **dims}
    return _build(keras_hub.models.QwenMoeBackbone, seed, **config)


def qwen3_moe_backbone(seed: int = 0, **dims):
    """Three blocks, the middle one a dense MLP (mlp_only_layers)."""
    config = {**_MOE, "num_layers": 3, "head_dim": 32, "mlp_only_layers": [1], **dims}
    return _build(keras_hub.models.Qwen3MoeBackbone, seed, **config)


def gpt_oss_backbone(seed: int = 0, **dims):
    """gpt-oss: experts with a fused, interleaved gate+up bank and biases (the
    biases get trained-like values too, so that carrying them is checked).

    Weights are drawn from ``seed + 3``: with those, no token of the test
    inputs sits at a near-tie of its top-2 router logits, where any rounding
    upstream would swap an expert and move that token's output entirely.
    """
    config = {**_DECODER, "num_experts": 4, "top_k": 2, "head_dim": 32, **dims}
    config.update(sliding_window=16, intermediate_dim=config["intermediate_dim"] // 2)
    return _build(keras_hub.models.GptOssBackbone, seed + 3, **config)


# Recipe name -> builder of a tiny backbone that recipe serves.
BUILDERS = {
    "mixtral": mixtral_backbone,
    "qwen_moe": qwen_moe_backbone,
    "qwen3_moe": qwen3_moe_backbone,
    "gpt_oss": gpt_oss_backbone,
    "gemma3": gemma3_backbone,
    "mistral": mistral_backbone,
    "qwen": qwen_backbone,
    "qwen3": qwen3_backbone,
    "phi3": phi3_backbone,
    "gpt2": gpt2_backbone,
    "smollm3": smollm3_backbone,
    "bert": bert_backbone,
    "roberta": roberta_backbone,
    "xlm_roberta": xlm_roberta_backbone,
    "distil_bert": distil_bert_backbone,
}


@functools.cache
def float_state(name: str, seed: int = 0) -> tuple:
    """``(class, config, weights)`` of family ``name``'s tiny backbone, built
    once per process: tests rebuild fresh float copies from it cheaply."""
    backbone = BUILDERS[name](seed=seed)
    return type(backbone), backbone.get_config(), backbone.get_weights()


def fresh_backbone(name: str, seed: int = 0):
    """A new float copy of family ``name``'s tiny backbone (see ``float_state``)."""
    cls, config, weights = float_state(name, seed)
    backbone = cls.from_config(config)
    backbone.set_weights(weights)
    return backbone


def sample_inputs(backbone, batch: int = 2, length: int = 12, seed: int = 7) -> dict:
    """Inputs for ``backbone``: token ids, a padding mask with some padding, and
    segment ids where the backbone takes them."""
    rng = np.random.default_rng(seed)
    vocab = backbone.vocabulary_size
    mask = np.ones((batch, length), "int32")
    mask[1, length - 3 :] = 0
    inputs = {
        "token_ids": rng.integers(4, vocab, (batch, length)).astype("int32"),
        "padding_mask": mask,
    }
    if "segment_ids" in backbone.input:  # a functional backbone's inputs: a dict
        segments = (np.arange(length) >= length // 2).astype("int32")
        inputs["segment_ids"] = np.repeat(segments[None], batch, axis=0)
    return inputs
