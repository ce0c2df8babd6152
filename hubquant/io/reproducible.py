"""Same inputs, same bytes: remove the save times Keras and KerasHub write."""

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


def normalize_keras_archive(path: Path) -> None:
    """Rewrite a ``.keras`` zip with fixed entry times and a fixed save date."""
    tmp = path.with_suffix(".keras.tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "metadata.json":
                data = _normalized(data.decode()).encode()
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
