"""Preset names as users type them: exact, unique prefix, or a helpful refusal.

Everything here reads KerasHub's own registry of built-in presets; nothing is
downloaded.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from hubquant.errors import PresetError, RecipeError


def _registry() -> dict:
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    return BUILTIN_PRESETS


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
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS_FOR_BACKBONE

    from hubquant.recipe import discovered_recipes, recipe_for_backbone

    known = discovered_recipes()
    rows = []
    for backbone_cls, presets in BUILTIN_PRESETS_FOR_BACKBONE.items():
        try:
            recipe = recipe_for_backbone([c.__name__ for c in backbone_cls.__mro__], known=known)
        except RecipeError:
            continue
        for preset, info in presets.items():
            if filter_text.lower() in preset.lower():
                params = (info.get("metadata") or {}).get("params")
                rows.append((preset, recipe.name, params))
    return sorted(rows)
