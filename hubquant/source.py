"""Load the float model a user names with ``--preset``."""

from __future__ import annotations

import os
from pathlib import Path

from hubquant.errors import PresetError
from hubquant.io.names import shard_names
from hubquant.synthetic import DEFAULT_PRESET


def load_source(preset: str):
    """A float KerasHub task (a CausalLM where the preset has one) or backbone."""
    if preset == DEFAULT_PRESET:
        from hubquant.synthetic import default_causal_lm

        return default_causal_lm()
    _check_local(preset)
    import keras_hub

    kwargs = {"dtype": dtype} if (dtype := saved_dtype(preset)) else {}
    try:
        if _is_backbone_only(preset):
            return keras_hub.models.Backbone.from_preset(preset, **kwargs)
        return keras_hub.models.CausalLM.from_preset(preset, **kwargs)
    except ValueError as e:
        if "Unable to find a subclass" not in str(e):
            raise PresetError(_first_line(preset, e)) from None
    except Exception as e:  # downloads, unreadable files: one clear line
        raise PresetError(_first_line(preset, e)) from None
    try:
        return keras_hub.models.Backbone.from_preset(preset, **kwargs)
    except Exception as e:
        raise PresetError(_first_line(preset, e)) from None


def backbone_class_names(preset: str) -> list[str] | None:
    """The class names (MRO) of a KerasHub preset's backbone, from its config.json
    alone; None when that cannot be told without loading (e.g. a Hugging Face folder)."""
    import keras
    from keras_hub.src.utils.preset_utils import load_json

    if preset == DEFAULT_PRESET:
        return None
    try:
        name = load_json(preset, "config.json").get("registered_name")
    except Exception:
        return None  # loading reports the real problem
    cls = keras.saving.get_registered_object(name) if isinstance(name, str) else None
    return None if cls is None else [c.__name__ for c in cls.__mro__]


def _is_backbone_only(preset: str) -> bool:
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
    from keras_hub.src.utils.preset_utils import load_json

    try:
        config = load_json(preset, "config.json")
    except Exception:
        return None  # from_preset reports the real problem
    dtype = config.get("config", {}).get("dtype") or config.get("torch_dtype")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    return dtype if dtype in ("float32", "bfloat16", "float16") else None


def _check_local(preset: str) -> None:
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


def _first_line(preset: str, error: Exception) -> str:
    text = str(error).strip().splitlines()
    detail = text[0] if text else type(error).__name__
    kind = type(error).__name__
    if any(w in detail.lower() for w in ("connect", "resolve", "network", "http", "timed out")):
        return f"preset '{preset}' could not be fetched (no network?): {kind}: {detail}"
    return f"preset '{preset}' could not be loaded: {kind}: {detail}"
