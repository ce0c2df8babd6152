"""The float preset a user names with ``--preset``: resolved, checked and loaded.

A name is resolved against KerasHub's own registry (exact, unique prefix, or a
helpful refusal; nothing is downloaded to decide), a local folder is checked
before KerasHub reads it, and the float model is loaded in the dtype it was
saved in.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from hubquant.errors import PresetError, RecipeError
from hubquant.io.names import shard_names
from hubquant.synthetic import DEFAULT_PRESET


def _registry() -> dict:
    from hubquant.keras_internals import builtin_presets

    return builtin_presets()


def resolve_preset(name: str) -> tuple[str, str | None]:
    """The preset to load for ``name``, and a note when it was expanded.

    A path or handle is kept as is; otherwise a KerasHub preset name; otherwise
    the one preset named ``name_...``. Ambiguous or unknown names are refused
    with the closest candidates.
    """
    if "://" in name or _looks_local(name):
        return name, None
    registry = _registry()
    if name in registry:
        return name, None
    matches = sorted(p for p in registry if p.startswith(f"{name}_"))
    if len(matches) == 1:
        return matches[0], f"using KerasHub preset '{matches[0]}' for '{name}'"
    if matches:
        shown = ", ".join(matches[:8]) + (", ..." if len(matches) > 8 else "")
        raise PresetError(f"preset '{name}' is ambiguous: did you mean one of {shown}?")
    close = difflib.get_close_matches(name, list(registry), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else " `hubquant presets` lists them."
    raise PresetError(f"unknown preset '{name}': not a folder and not a KerasHub preset.{hint}")


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name or Path(name).exists()


def supported_presets(filter_text: str = "") -> list[tuple[str, str, int | None]]:
    """(preset, recipe name, parameter count) for presets a recipe serves."""
    from hubquant.keras_internals import builtin_presets_by_backbone
    from hubquant.recipe import discovered_recipes, recipe_for_backbone

    known = discovered_recipes()
    rows = []
    for backbone_cls, presets in builtin_presets_by_backbone().items():
        try:
            recipe = recipe_for_backbone([c.__name__ for c in backbone_cls.__mro__], known=known)
        except RecipeError:
            continue
        for preset, info in presets.items():
            if filter_text.lower() in preset.lower():
                params = (info.get("metadata") or {}).get("params")
                rows.append((preset, recipe.name, params))
    return sorted(rows)


def load_source(preset: str):
    """A float KerasHub task (a CausalLM where the preset has one) or backbone,
    told where it came from (``hubquant_source``: calibration and eval read the
    folder's own tokenizer.json through it)."""
    model = _load_source(preset)
    object.__setattr__(model, "hubquant_source", preset)
    return model


def _load_source(preset: str):
    if preset == DEFAULT_PRESET:
        from hubquant.synthetic import default_causal_lm

        return default_causal_lm()
    check_local(preset)
    import keras_hub

    kwargs = {"dtype": dtype} if (dtype := saved_dtype(preset)) else {}
    try:
        if is_backbone_only(preset):
            return keras_hub.models.Backbone.from_preset(preset, **kwargs)
        return keras_hub.models.CausalLM.from_preset(preset, **kwargs)
    except ValueError as e:
        if "Unable to find a subclass" not in str(e):
            raise PresetError(load_error_line(preset, e)) from None
    except Exception as e:  # downloads, unreadable files: one clear line
        raise PresetError(load_error_line(preset, e)) from None
    try:
        return keras_hub.models.Backbone.from_preset(preset, **kwargs)
    except Exception as e:
        raise PresetError(load_error_line(preset, e)) from None


def backbone_class_names(preset: str) -> list[str] | None:
    """The class names (MRO) of a KerasHub preset's backbone, from its config.json
    alone; None when that cannot be told without loading (e.g. a Hugging Face folder)."""
    import keras

    from hubquant.keras_internals import load_json

    if preset == DEFAULT_PRESET:
        return None
    try:
        name = load_json(preset, "config.json").get("registered_name")
    except Exception:
        return None  # loading reports the real problem
    cls = keras.saving.get_registered_object(name) if isinstance(name, str) else None
    return None if cls is None else [c.__name__ for c in cls.__mro__]


def is_backbone_only(preset: str) -> bool:
    """A local KerasHub preset folder saved from a backbone alone (no tokenizer)."""
    import json

    path = Path(preset).expanduser()
    if not path.is_dir() or any((path / f).is_file() for f in ("tokenizer.json", "task.json")):
        return False
    try:
        return "registered_name" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False  # loading reports the real problem


def saved_dtype(preset: str) -> str | None:
    """The float dtype a preset was saved in, so a bf16 preset stays bf16.

    KerasHub would otherwise load it in the global default (float32): twice
    the memory, and a quantized model that computes in float32.
    """
    from hubquant.keras_internals import load_json

    try:
        config = load_json(preset, "config.json")
    except Exception:
        return None  # from_preset reports the real problem
    dtype = config.get("config", {}).get("dtype") or config.get("torch_dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    return dtype if dtype in ("float32", "bfloat16", "float16") else None


def check_local(preset: str) -> None:
    looks_local = preset.startswith((".", "/", "~")) or os.sep in preset
    if "://" in preset or not looks_local:
        return
    path = Path(preset).expanduser()
    if not path.exists():
        raise PresetError(f"preset '{preset}' not found: no such file or folder.")
    if not (path / "config.json").is_file():
        raise PresetError(
            f"preset '{preset}' is not a KerasHub or Hugging Face preset folder: "
            "it has no config.json."
        )
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shard_names(index)  # every shard a plain file name inside the folder


def load_error_line(preset: str, error: Exception) -> str:
    text = str(error).strip().splitlines()
    detail = text[0] if text else type(error).__name__
    kind = type(error).__name__
    if any(w in detail.lower() for w in ("connect", "resolve", "network", "http", "timed out")):
        return f"preset '{preset}' could not be fetched (no network?): {kind}: {detail}"
    return f"preset '{preset}' could not be loaded: {kind}: {detail}"
