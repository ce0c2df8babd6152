"""Hugging Face config and weight mappings for families KerasHub cannot export.

Each family has a config function (the Hugging Face ``config.json`` fields,
from the backbone's constructor arguments) and a weights function (Hugging
Face tensor name -> Keras value), shaped like KerasHub's own
``MODEL_CONFIGS`` / ``MODEL_EXPORTERS`` so the exporter treats both alike.
Projection names come from the recipe's ``hf`` names; each projection is
written in Hugging Face's ``[out, in]`` layout (hubquant's canonical
``[N, K]``).
"""

from __future__ import annotations

from keras import ops

from hubquant.layers.layout import KernelLayout


def qwen3_config(backbone) -> dict:
    """``Qwen3ForCausalLM``'s config (KerasHub's converter, inverted)."""
    window = backbone.sliding_window_size
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "intermediate_size": backbone.intermediate_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads,
        "num_key_value_heads": backbone.num_key_value_heads,
        "head_dim": backbone.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": backbone.layer_norm_epsilon,
        "rope_parameters": _rope(backbone),
        "tie_word_embeddings": backbone.tie_word_embeddings,
        "attention_bias": False,
        "attention_dropout": backbone.dropout,
        "max_position_embeddings": 40960,
        "use_cache": True,
        # KerasHub slides the window in every layer when one is set.
        "use_sliding_window": window is not None,
        "sliding_window": window,
        "max_window_layers": 0,
        "layer_types": ["sliding_attention" if window is not None else "full_attention"]
        * backbone.num_layers,
    }
    return config


def _rope(backbone) -> dict:
    factor = float(backbone.rope_scaling_factor)
    rope = {"rope_type": "default", "rope_theta": float(backbone.rope_max_wavelength)}
    if factor != 1.0:
        rope.update(rope_type="linear", factor=factor)
    return rope


def qwen3_weights(backbone, include_lm_head: bool = False) -> dict:
    """Hugging Face name -> value for every Qwen3 tensor."""
    table = backbone.token_embedding
    weights = {"model.embed_tokens.weight": table.embeddings}
    weights.update(_projections(backbone))
    for i, block in enumerate(backbone.transformer_layers):
        attention = block._self_attention_layer
        prefix = f"model.layers.{i}"
        weights[f"{prefix}.input_layernorm.weight"] = block._self_attention_layernorm.scale
        weights[f"{prefix}.post_attention_layernorm.weight"] = block._feedforward_layernorm.scale
        weights[f"{prefix}.self_attn.q_norm.weight"] = attention._query_dense_layer_norm.scale
        weights[f"{prefix}.self_attn.k_norm.weight"] = attention._key_dense_layer_norm.scale
    weights["model.norm.weight"] = backbone.layer_norm.scale
    if include_lm_head and not backbone.tie_word_embeddings:
        weights["lm_head.weight"] = ops.transpose(table.reverse_embeddings)
    return weights


def _projections(backbone) -> dict:
    """Each block's recipe role with an ``hf`` name, as an ``[out, in]`` matrix."""
    from hubquant.recipe import recipe_for_backbone
    from hubquant.surgery import layer_at

    recipe = recipe_for_backbone([c.__name__ for c in type(backbone).__mro__])
    out = {}
    for i in range(len(getattr(backbone, recipe.blocks))):
        for spec in recipe.roles:
            if spec.scope == "backbone" or spec.hf is None:
                continue
            layer = layer_at(backbone, f"{recipe.blocks}.{i}.{spec.path}")
            out[spec.hf.replace("{block}", str(i)) + ".weight"] = _matrix(layer)
    return out


def _matrix(layer):
    kernel = layer.kernel
    shape = tuple(kernel.shape)
    equation = getattr(layer, "equation", None)
    layout = KernelLayout.einsum(equation, shape) if equation else KernelLayout.dense(shape)
    perm = layout.output_axes + layout.reduce_axes
    return ops.reshape(ops.transpose(kernel, perm), (layout.n, layout.k))


def qwen2_config_fields(backbone) -> dict:
    """Fields KerasHub's Qwen2 export leaves out but its Qwen2 import (and
    Hugging Face's config) needs: the sliding window, in every layer when set."""
    window = backbone.use_sliding_window_attention
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "use_sliding_window": window,
        "sliding_window": backbone.sliding_window_size,
        "max_window_layers": 0,
        "layer_types": ["sliding_attention" if window else "full_attention"] * backbone.num_layers,
    }


# Backbone class name -> (config function, weights function).
FAMILIES = {"Qwen3Backbone": (qwen3_config, qwen3_weights)}
# Backbone class name -> function giving fields to add to KerasHub's config.
CONFIG_FIELDS = {"QwenBackbone": qwen2_config_fields}
