"""Same inputs, same bytes: remove the save times Keras and KerasHub write, and
put in a fixed order what KerasHub writes in set order (a tokenizer's
``unsplittable_tokens``)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

FIXED_DATE = "1980-01-01@00:00:00"  # the zip format's epoch
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def normalize_metadata_json(path: Path) -> None:
    """Replace ``date_saved`` in a KerasHub/Keras ``metadata.json``."""
    if path.is_file():
        path.write_text(_normalized(path.read_text()))


def normalize_preset_json(folder: Path) -> None:
    """Give every set-ordered list in a preset's JSON files a fixed order."""
    for path in sorted(folder.glob("*.json")):
        text = path.read_text()
        fixed = _ordered_text(text)
        if fixed != text:
            path.write_text(fixed)


def _ordered_text(text: str) -> str:
    data = json.loads(text)
    return json.dumps(ordered(data), indent=4) if _has_set_order(data) else text


def _has_set_order(node) -> bool:
    if isinstance(node, dict):
        return "unsplittable_tokens" in node or any(map(_has_set_order, node.values()))
    return isinstance(node, list) and any(map(_has_set_order, node))


def ordered(node):
    """``unsplittable_tokens`` longest first, then by text: a fixed order that keeps
    a longer token matched before any token it starts with."""
    if isinstance(node, dict):
        out = {k: ordered(v) for k, v in node.items()}
        tokens = out.get("unsplittable_tokens")
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            out["unsplittable_tokens"] = sorted(tokens, key=lambda t: (-len(t), t))
        return out
    if isinstance(node, list):
        return [ordered(v) for v in node]
    return node


def normalize_keras_archive(path: Path) -> None:
    """Rewrite a ``.keras`` zip with fixed entry times and a fixed save date."""
    tmp = path.with_suffix(".keras.tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "metadata.json":
                data = _normalized(data.decode()).encode()
            elif info.filename.endswith(".json"):
                data = _ordered_text(data.decode()).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            dst.writestr(fixed, data)
    tmp.replace(path)


def _normalized(text: str) -> str:
    data = json.loads(text)
    if "date_saved" in data:
        data["date_saved"] = FIXED_DATE
    return json.dumps(data, indent=4)
