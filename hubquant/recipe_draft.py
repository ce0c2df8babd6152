"""``hubquant recipes new``: a starting recipe read off a model's structure.

The backbone a preset describes (KerasHub or Hugging Face ``config.json``) is
built at a tiny size, without its weights; its block list is found, every
sublayer that holds a matrix is listed by attribute path, and roles are guessed
from those paths. The draft is data for a person to check, not a verdict.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras

from hubquant.errors import PresetError, first_line
from hubquant.keras_internals import own_variables

# Tiny sizes: every layer kind still exists, nothing is large.
_TINY = {
    "vocabulary_size": 256,
    "hidden_dim": 64,
    "intermediate_dim": 128,
    "moe_intermediate_dim": 32,
    "shared_expert_intermediate_dim": 64,
    "head_dim": 16,
    "num_experts": 4,
    "num_layers": 4,
}
_QUERY_HEADS = ("num_query_heads", "num_heads", "num_attention_heads")
_SKIPPED = ("_layers", "_operations", "_tracker", "_inbound_nodes", "_outbound_nodes")

# (role, pattern searched in the lower-case path within its block), first match wins.
_BLOCK_ROLES = (
    ("moe.shared_router", r"shared_expert_gate"),
    ("moe.shared.up", r"shared_expert.*(intermediate|up_proj)"),
    ("moe.shared.gate", r"shared_expert.*gat"),
    ("moe.shared.down", r"shared_expert.*(output|down)"),
    ("moe.router", r"router|sparse\w*gate"),
    ("attn.qkv", r"qkv|query_key_value|c_attn"),
    ("attn.q", r"query|q_proj|q_lin"),
    ("attn.k", r"key|k_proj|k_lin"),
    ("attn.v", r"value|v_proj|v_lin"),
    ("attn.o", r"att(n|ention).*(output|o_proj|out_)|o_proj|out_lin"),
    ("mlp.gate_up", r"gate_up"),
    ("mlp.up", r"intermediate|up_proj|gating_ffw_2|fc1|lin1|c_fc"),
    ("mlp.gate", r"gat(e|ing)"),
    ("mlp.down", r"output|down|ffw_linear|fc2|lin2|c_proj"),
)
_BACKBONE_ROLES = (
    ("embed.position", r"position"),
    ("embed", r"token|embed_tokens|word"),
    ("pooler", r"pool"),
    ("lm_head", r"lm_head|output"),
)


def draft_recipe(preset: str) -> str:
    """Recipe YAML for the backbone ``preset`` (a folder or its config.json) describes."""
    cls, config, model_type = backbone_config(preset)
    backbone = build_tiny(cls, config, preset)
    return draft_for(backbone, model_type)


def backbone_config(preset: str) -> tuple[type, dict, str | None]:
    """The backbone class, its constructor arguments and the HF model type."""
    from hubquant.keras_internals import get_preset_loader

    path = Path(preset).expanduser()
    if path.is_file():
        preset = str(path.parent)
    try:
        loader = get_preset_loader(preset)
        cls = loader.check_backbone_class()
    except Exception as e:
        detail = first_line(e)
        raise PresetError(f"preset '{preset}' could not be read: {detail}") from None
    if "model_type" not in loader.config:
        return cls, dict(loader.config["config"]), None
    convert = loader.converter.convert_backbone_config
    try:
        kwargs = convert(loader.config)
    except TypeError:  # converters that also take the class
        kwargs = convert(loader.config, cls)
    return cls, dict(kwargs), loader.config["model_type"]


def tiny_config(config: dict) -> dict:
    """``config`` with its sizes shrunk; per-layer lists cut to the new depth."""
    tiny = dict(config)
    for key, small in _TINY.items():
        if isinstance(tiny.get(key), int) and tiny[key] > small:
            tiny[key] = small
    heads = next((k for k in _QUERY_HEADS if isinstance(tiny.get(k), int)), None)
    if heads is not None and tiny[heads] > 4:
        kv = tiny.get("num_key_value_heads")
        tiny[heads] = 4
        if isinstance(kv, int):
            tiny["num_key_value_heads"] = 4 if kv == config[heads] else min(kv, 2)
    if isinstance(tiny.get("top_k"), int):
        tiny["top_k"] = min(tiny["top_k"], tiny.get("num_experts", 2), 2)
    layers = config.get("num_layers")
    for key, value in config.items():
        if isinstance(value, list) and layers and len(value) == layers:
            tiny[key] = value[: tiny["num_layers"]]
    if isinstance(tiny.get("vision_encoder"), dict):
        tiny["vision_encoder"] = None  # recipes cover the text path
    return tiny


def build_tiny(cls: type, config: dict, preset: str):
    try:
        return cls.from_config({**tiny_config(config), "dtype": "float32"})
    except Exception as e:
        raise PresetError(
            f"preset '{preset}': could not build {cls.__name__} at a tiny size: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from None


def draft_for(backbone, model_type: str | None = None) -> str:
    """Recipe YAML (with comments) for a built backbone."""
    cls_name = _keras_hub_class(backbone).__name__
    blocks_attr, blocks = find_blocks(backbone)
    per_block = [dict(matrix_layers(block)) for block in blocks]
    paths = list(dict.fromkeys(p for found in per_block for p in found))
    lines = [
        f"# Draft recipe for {cls_name}, from `hubquant recipes new`. Roles are",
        "# guessed from layer names: check each, add `hf` tensor names if you will",
        "# export to Hugging Face, then run `hubquant recipes validate FILE`.",
        f"name: {_snake(cls_name.removesuffix('Backbone'))}",
        f"description: {cls_name} (draft)",
        f"backbones: [{cls_name}]",
        f"blocks: {blocks_attr}",
    ]
    if model_type:
        lines.append(f"hf_model_type: {model_type}")
    lines.append("roles:")
    taken: set[str] = set()
    for path in paths:
        layer = next(found[path] for found in per_block if path in found)
        optional = not all(path in found for found in per_block)
        lines += _role_lines(path, layer, _BLOCK_ROLES, taken, "block", optional)
    for path, layer in matrix_layers(backbone, skip=(blocks_attr,)):
        lines += _role_lines(path, layer, _BACKBONE_ROLES, taken, "backbone", False)
    return "\n".join(lines) + "\n"


def find_blocks(backbone) -> tuple[str, list]:
    """The backbone attribute holding the longest list of layers."""
    lists = [
        (name, value)
        for name, value in vars(backbone).items()
        if name not in _SKIPPED
        and isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, keras.layers.Layer) for v in value)
    ]
    if not lists:
        raise PresetError(f"{type(backbone).__name__}: no attribute holds a list of blocks")
    name, value = max(lists, key=lambda item: (len(item[1]), "layer" in item[0]))
    return _public_name(backbone, name, value), list(value)


def matrix_layers(root, skip=()) -> list[tuple[str, keras.layers.Layer]]:
    """(attribute path, layer) of every sublayer of ``root`` holding a rank >= 2 weight."""
    found, seen = [], set()

    def walk(obj, prefix):
        for name, value in list(vars(obj).items()):
            if name in _SKIPPED or name in skip or name.lstrip("_") in skip:
                continue
            items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
            for index, item in items:
                if not isinstance(item, keras.layers.Layer) or id(item) in seen:
                    continue
                seen.add(id(item))
                path = _public_name(obj, name, value)
                path = prefix + (path if index is None else f"{path}.{index}")
                if any(len(v.shape) >= 2 for v in _own_weights(item)):
                    found.append((path, item))
                walk(item, path + ".")

    walk(root, "")
    return found


def _role_lines(path, layer, table, taken, scope, optional) -> list[str]:
    from keras.layers import Dense, EinsumDense, Embedding, ReversibleEmbedding

    kind = type(layer).__name__
    extra = ", scope: backbone" if scope == "backbone" else ""
    extra += ", optional: true" if optional else ""
    if isinstance(layer, (Dense, EinsumDense, Embedding)):
        table = table if isinstance(layer, Embedding) else _no_position(table)
        role = _guess(path, table, taken)
        if role is None:
            return [
                f"  # ?: {{path: {path}{extra}}}  # {kind}: no role guessed; name one or leave it float"
            ]
        lines = [f"  {role}: {{path: {path}{extra}}}  # {kind}"]
        if isinstance(layer, ReversibleEmbedding) and "lm_head" not in taken:
            taken.add("lm_head")
            if getattr(layer, "tie_weights", True):
                note = "# the same table, used as the LM head"
            else:
                note = "# its untied LM-head matrix"
            lines.append(f"  lm_head: {{path: {path}{extra}, part: reverse}}  {note}")
        return lines
    banks = [n for n, v in vars(layer).items() if _is_variable(v) and len(v.shape) == 3]
    if banks and "moe.experts" not in taken:
        taken.add("moe.experts")
        return [
            f"  moe.experts:  # {kind}: expert banks [experts, in, out]",
            f"    {{path: {path}{extra}, matrices: [{', '.join(banks)}]}}",
        ]
    return [f"  # stays float: {path} ({kind}) is not a layer hubquant can replace"]


def _no_position(table):
    return tuple(row for row in table if row[0] != "embed.position")


def _guess(path: str, table, taken: set) -> str | None:
    text = path.lower()
    for role, pattern in table:
        if role not in taken and re.search(pattern, text):
            taken.add(role)
            return role
    return None


def _own_weights(layer) -> list:
    return own_variables(layer)


def _is_variable(value) -> bool:
    return isinstance(value, keras.Variable)


def _public_name(owner, name: str, value) -> str:
    """``token_embedding`` rather than ``_token_embedding`` when both name it."""
    public = name.lstrip("_")
    if public != name and getattr(type(owner), public, None) is not None:
        try:
            if getattr(owner, public) is value:
                return public
        except Exception:
            pass
    return name


def _keras_hub_class(backbone) -> type:
    return next(c for c in type(backbone).__mro__ if not c.__module__.startswith("hubquant"))


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
