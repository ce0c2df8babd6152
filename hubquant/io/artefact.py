"""What a hubquant artefact folder holds, checked before anything is built from it.

Its metadata file (the Plan and the formats written), the files each format
needs, and one-line errors for files that are missing, truncated or corrupt.
"""

from __future__ import annotations

import json
from pathlib import Path

from hubquant.errors import ArtefactError, first_line
from hubquant.io.names import shard_names
from hubquant.plan import FORMAT_VERSION

METADATA_FILE = "hubquant.json"
KERAS_FILE = "model.keras"
FORMATS = ("preset", "keras", "safetensors", "hf")
HF_FOLDER = "hf"


def read_metadata(folder: Path) -> dict:
    path = folder / METADATA_FILE
    if not path.is_file():
        raise ArtefactError(f"'{folder}' is not a hubquant artefact: it has no {METADATA_FILE}.")
    meta = read_json(path)
    version = meta.get("format_version", 0)
    if not isinstance(version, int):
        raise ArtefactError(f"'{path}' is corrupt: format_version {version!r} is not a number.")
    if version > FORMAT_VERSION:
        raise ArtefactError(
            f"'{path}' has format version {meta['format_version']}, newer than this "
            f"hubquant understands ({FORMAT_VERSION}). Upgrade hubquant."
        )
    if not isinstance(meta.get("plan"), dict) or not isinstance(meta.get("formats"), list):
        raise ArtefactError(f"'{path}' is corrupt: it lacks the Plan or the list of formats.")
    return meta


def check_weight_files(folder: Path) -> None:
    """Refuse a truncated or corrupt Keras weights file before anything is built."""
    import h5py

    for path in sorted(folder.glob("*.weights.h5")):
        try:
            h5py.File(path, "r").close()
        except OSError as e:
            raise ArtefactError(f"'{path}' is truncated or corrupt: {first_line(e)}") from None


def load_error(path: Path, e: Exception, *corrupt: type) -> ArtefactError:
    """One line for an artefact Keras failed to load (``corrupt``: exception types
    that mean the file is damaged)."""
    if "safe_mode" in str(e):
        return ArtefactError(
            f"'{path}' holds Python code (e.g. a Lambda layer), which hubquant does not "
            "run: it loads with Keras' safe_mode on. It was not written by hubquant."
        )
    damaged = isinstance(e, (*corrupt, EOFError, OSError))
    what = "is truncated or corrupt" if damaged else "cannot be loaded"
    return ArtefactError(f"'{path}' {what}: {type(e).__name__}: {first_line(e)}")


def missing_files(folder: Path, meta: dict) -> list[str]:
    """Files the folder's recorded formats need but that are not there."""
    return [f for fmt in meta.get("formats", []) for f in _missing(folder, fmt)]


def _missing(folder: Path, fmt: str) -> list[str]:
    required = {
        "preset": ["config.json", "metadata.json"],
        "keras": ["model.keras"],
        "hf": ["hf/config.json", "hf/model.safetensors"],
    }.get(fmt, [])
    missing = [f for f in required if not (folder / f).is_file()]
    if fmt == "preset" and not any(
        (folder / f).is_file() for f in ("model.weights.h5", "model.weights.json")
    ):
        missing.append("model.weights.h5")
    if fmt == "safetensors":
        missing += _missing_shards(folder)
    return missing


def _missing_shards(folder: Path) -> list[str]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [s for s in shard_names(index) if not (folder / s).is_file()]
    return [] if (folder / "model.safetensors").is_file() else ["model.safetensors"]


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtefactError(f"'{path}' is truncated or corrupt: {e}") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"'{path}' is corrupt: expected a JSON object.")
    return data
