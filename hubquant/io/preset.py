"""KerasHub preset folders and ``.keras`` archives with hubquant's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import keras
from keras_hub.models import Backbone, Task

from hubquant._version import __version__
from hubquant.errors import ArtefactError, first_line
from hubquant.io.reproducible import (
    normalize_keras_archive,
    normalize_metadata_json,
    normalize_preset_json,
)
from hubquant.plan import FORMAT_VERSION, Plan

METADATA_FILE = "hubquant.json"
KERAS_FILE = "model.keras"
FORMATS = ("preset", "keras", "safetensors", "hf")
HF_FOLDER = "hf"


def writers(formats) -> list:
    """The writer for each requested format, in order; unknown ones are an error."""
    from hubquant.errors import HubquantError
    from hubquant.io.safetensors_format import save_safetensors

    table = {
        "preset": save_preset,
        "keras": save_keras,
        "safetensors": save_safetensors,
        "hf": save_hf,
    }
    for fmt in formats:
        if fmt not in table:
            raise HubquantError(
                f"unknown output format '{fmt}'; accepted: {', '.join(FORMATS)}. "
                f"Received: format={','.join(formats)}"
            )
    return [table[fmt] for fmt in formats]


def write_metadata(folder: Path, plan: Plan, formats) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "hubquant_version": __version__,
        "formats": list(formats),
        "recipe": {"name": plan.recipe, "text": plan.recipe_text},
        "config": {"source": plan.config_source, "text": plan.config_text},
        "plan": plan.to_dict(),
    }
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


def save_preset(model, folder: Path) -> None:
    """KerasHub's own preset layout: config, weights, tokenizer assets."""
    from hubquant.io.tokenizers import keep_special_tokens

    keep_special_tokens(model)
    model.save_to_preset(str(folder))
    normalize_metadata_json(folder / "metadata.json")
    normalize_preset_json(folder)


def save_keras(model, folder: Path) -> None:
    model.save(str(folder / KERAS_FILE))
    normalize_keras_archive(folder / KERAS_FILE)


def save_hf(model, folder: Path) -> None:
    """The Hugging Face (compressed-tensors) export, in ``folder/hf``."""
    from hubquant.io.hf_export import export_hf

    (folder / HF_FOLDER).mkdir()
    export_hf(model, folder / HF_FOLDER)


def read_metadata(folder: Path) -> dict:
    path = folder / METADATA_FILE
    if not path.is_file():
        raise ArtefactError(f"'{folder}' is not a hubquant artefact: it has no {METADATA_FILE}.")
    meta = _read_json(path)
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


def load_folder(folder: Path):
    """The quantized task (or backbone) from a preset folder hubquant wrote."""
    meta = read_metadata(folder)
    from hubquant.inspect import missing_files

    missing = missing_files(folder, meta)
    if missing:
        raise ArtefactError(
            f"'{folder}' is incomplete: {', '.join(missing)} missing (formats {meta['formats']})."
        )
    check_weight_files(folder)
    if (folder / "task.json").is_file():
        config = _read_json(folder / "task.json")
        cls = keras.saving.get_registered_object(config.get("registered_name"))
        if cls is None or not issubclass(cls, Task):
            raise ArtefactError(
                f"'{folder}/task.json' names {config.get('registered_name')}, which is not a "
                "task class hubquant knows."
            )
        return _from_preset(cls, folder)
    if (folder / "config.json").is_file():
        return _from_preset(Backbone, folder)
    from hubquant.io.safetensors_format import is_safetensors_folder, load_safetensors

    if is_safetensors_folder(folder):
        return load_safetensors(folder)
    if (folder / KERAS_FILE).is_file():
        return load_keras(folder / KERAS_FILE)
    raise ArtefactError(
        f"'{folder}' holds {METADATA_FILE} but no model files (formats {meta.get('formats')})."
    )


def check_weight_files(folder: Path) -> None:
    """Refuse a truncated or corrupt Keras weights file before anything is built."""
    import h5py

    for path in sorted(folder.glob("*.weights.h5")):
        try:
            h5py.File(path, "r").close()
        except OSError as e:
            raise ArtefactError(f"'{path}' is truncated or corrupt: {first_line(e)}") from None


def load_keras(path: Path):
    """A ``.keras`` archive, loaded with Keras' safe_mode on (no Python code runs)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ArtefactError(
            f"'{path}' is truncated or corrupt: not a readable .keras archive (no zip directory)."
        )
    try:
        return keras.saving.load_model(str(path), safe_mode=True)
    except Exception as e:
        raise load_error(path, e, zipfile.BadZipFile) from None


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


def _from_preset(cls, folder: Path):
    try:
        return cls.from_preset(str(folder))
    except ArtefactError:
        raise
    except Exception as e:  # a file that passed the checks above but does not read
        raise load_error(folder, e) from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtefactError(f"'{path}' is truncated or corrupt: {e}") from None
    if not isinstance(data, dict):
        raise ArtefactError(f"'{path}' is corrupt: expected a JSON object.")
    return data
