"""Names read from files that become paths: checked before they touch the disk.

A shared artefact may come from a stranger. A name in it (a shard in an index's
``weight_map``, a preset asset carried inside hubquant's safetensors) is only
ever a plain relative name inside the folder hubquant chose: no absolute paths,
no ``..``, no characters beyond letters, digits, ``._-``, and a bounded depth.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hubquant.errors import ArtefactError

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_ASSET_DEPTH = 4  # assets/<tokenizer>/<file>, with room to spare


def _is_plain(part: str) -> bool:
    return bool(_PART.fullmatch(part)) and ".." not in part


def shard_names(index_file: Path) -> list[str]:
    """The shard files an index's ``weight_map`` names: plain ``*.safetensors`` file
    names in the index's own folder, sorted, each once."""
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as e:
        raise ArtefactError(f"'{index_file}' is truncated or corrupt: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ArtefactError(
            f"'{index_file}' is corrupt: expected a 'weight_map' object naming each tensor's shard."
        )
    for tensor, shard in weight_map.items():
        if not (isinstance(shard, str) and _is_plain(shard) and shard.endswith(".safetensors")):
            raise ArtefactError(
                f"'{index_file}': tensor '{tensor}' names shard {shard!r}; a shard must be "
                "a plain '*.safetensors' file name in the same folder."
            )
    return sorted(set(weight_map.values()))


def asset_path(root: Path, name: str, file: Path) -> Path:
    """Where asset ``name`` (from tensor ``__preset__/name`` of ``file``) is written:
    ``root / name`` when ``name`` is ``assets/...`` of plain parts, else refused."""
    parts = name.split("/")
    if (
        len(parts) < 2
        or len(parts) > MAX_ASSET_DEPTH
        or parts[0] != "assets"
        or not all(_is_plain(p) for p in parts)
    ):
        raise ArtefactError(
            f"'{file}': tensor '__preset__/{name}' does not name a preset asset "
            "(expected assets/NAME/... of letters, digits and ._-); refusing to write it."
        )
    return root.joinpath(*parts)
