"""KerasHub preset folders and ``.keras`` archives with hubquant's metadata."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import keras
from keras_hub.models import Backbone, Task

from hubquant._version import __version__
from hubquant.errors import ArtefactError, HubquantError
from hubquant.io.artefact import (
    FORMATS,
    HF_FOLDER,
    KERAS_FILE,
    METADATA_FILE,
    check_weight_files,
    load_error,
    missing_files,
    read_json,
    read_metadata,
)
from hubquant.io.hdf5_files import hdf5_through_python
from hubquant.io.reproducible import (
    normalize_keras_archive,
    normalize_metadata_json,
    normalize_preset_json,
)
from hubquant.io.safetensors_format import is_safetensors_folder, load_safetensors, save_safetensors
from hubquant.plan import FORMAT_VERSION, Plan


def writers(formats) -> list:
    """The writer for each requested format, in order; unknown ones are an error."""
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
    with hdf5_through_python():
        model.save_to_preset(str(folder))
    normalize_metadata_json(folder / "metadata.json")
    normalize_preset_json(folder)


def save_keras(model, folder: Path) -> None:
    with hdf5_through_python():  # Keras writes the weights to disk first when memory is short
        model.save(str(folder / KERAS_FILE))
    normalize_keras_archive(folder / KERAS_FILE)


def save_hf(model, folder: Path) -> None:
    """The Hugging Face (compressed-tensors) export, in ``folder/hf``."""
    from hubquant.io.hf_export import export_hf

    (folder / HF_FOLDER).mkdir()
    export_hf(model, folder / HF_FOLDER)


def load_folder(folder: Path):
    """The quantized task (or backbone) from a preset folder hubquant wrote."""
    meta = read_metadata(folder)
    missing = missing_files(folder, meta)
    if missing:
        raise ArtefactError(
            f"'{folder}' is incomplete: {', '.join(missing)} missing (formats {meta['formats']})."
        )
    check_weight_files(folder)
    if (folder / "task.json").is_file():
        config = read_json(folder / "task.json")
        cls = keras.saving.get_registered_object(config.get("registered_name"))
        if cls is None or not issubclass(cls, Task):
            raise ArtefactError(
                f"'{folder}/task.json' names {config.get('registered_name')}, which is not a "
                "task class hubquant knows."
            )
        return _from_preset(cls, folder)
    if (folder / "config.json").is_file():
        return _from_preset(Backbone, folder)
    if is_safetensors_folder(folder):
        return load_safetensors(folder)
    if (folder / KERAS_FILE).is_file():
        return load_keras(folder / KERAS_FILE)
    raise ArtefactError(
        f"'{folder}' holds {METADATA_FILE} but no model files (formats {meta.get('formats')})."
    )


def load_keras(path: Path):
    """A ``.keras`` archive, loaded with Keras' safe_mode on (no Python code runs)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ArtefactError(
            f"'{path}' is truncated or corrupt: not a readable .keras archive (no zip directory)."
        )
    try:
        with warnings.catch_warnings():
            # Keras warns that a KerasHub task's custom compile() was not restored;
            # the task compiles itself with its defaults when it is built.
            warnings.filterwarnings("ignore", r"`compile\(\)` was not called", UserWarning)
            return keras.saving.load_model(str(path), safe_mode=True)
    except Exception as e:
        raise load_error(path, e, zipfile.BadZipFile) from None


def _from_preset(cls, folder: Path):
    try:
        return cls.from_preset(str(folder))
    except ArtefactError:
        raise
    except Exception as e:  # a file that passed the checks above but does not read
        raise load_error(folder, e) from None
