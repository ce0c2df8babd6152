"""hubquant's own safetensors: quantized tensors as held, plus the metadata to rebuild.

Tensors are named by Keras variable path (``decoder_block_0/attention/query/
kernel_codes``) and stored as held: int8 codes, packed int4 bytes, float32
scales, int8 zero points, float weights in the model's dtype. The header's
string metadata records the format and hubquant versions, the recipe, config
and Plan, and the serialized task or backbone (JSON). A task's preprocessor
files (tokenizer vocabulary, ...) ride along as uint8 tensors under
``__preset__/``, so the files alone rebuild the quantized model. Large models
are split into shards with an index file, as Hugging Face does.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import keras
import numpy as np
from keras_hub.models import Task

from hubquant._version import __version__
from hubquant.errors import ArtefactError
from hubquant.io.artefact import load_error
from hubquant.io.names import asset_path, shard_names
from hubquant.io.reproducible import ordered
from hubquant.io.st_writer import spec_of, write_safetensors
from hubquant.paths import backbone_of
from hubquant.plan import FORMAT_VERSION

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PRESET_PREFIX = "__preset__/"
MAX_SHARD_BYTES = 4 << 30


def save_safetensors(model, folder: Path, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Write ``model.safetensors`` (or shards plus an index) into ``folder``."""
    backbone = backbone_of(model)
    metadata = _metadata(model, backbone)
    shards = _shards(_tensor_sources(model, backbone), max_shard_bytes)
    if len(shards) == 1:
        write_safetensors(folder / SINGLE_FILE, _specs(shards[0]), metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / name, _specs(shard), metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True))


def load_safetensors(path: Path):
    """Rebuild the quantized task (or backbone) from hubquant safetensors alone."""
    files, metadata = files_and_metadata(path)
    model = _rebuild(metadata, files[0])
    backbone = backbone_of(model)
    # Match tensors to variables by position: auto-generated layer names (and
    # so variable paths) can differ from one process to the next.
    order = json.loads(metadata["weights"])
    if len(order) != len(backbone.weights):
        raise ArtefactError(
            f"'{path}' lists {len(order)} weights; the rebuilt model has {len(backbone.weights)}."
        )
    variables = dict(zip(order, backbone.weights, strict=True))
    assigned = set()
    with tempfile.TemporaryDirectory() as assets:
        for file in files:
            assigned |= _read_shard(file, variables, Path(assets))
        if isinstance(model, Task) and model.preprocessor is not None:
            model.preprocessor.load_preset_assets(assets)
    missing = sorted(set(variables) - assigned)
    if missing:
        raise ArtefactError(f"'{path}' lacks {len(missing)} tensors, e.g. '{missing[0]}'.")
    return model


def _rebuild(metadata: dict, file: Path):
    """The model skeleton from the metadata's config (Keras' safe_mode: no Python code)."""
    try:
        config = json.loads(metadata["model_config"])
        return keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as e:
        raise load_error(file, e, json.JSONDecodeError) from None


def is_safetensors_folder(folder: Path) -> bool:
    return (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file()


def _metadata(model, backbone) -> dict[str, str]:
    plan = backbone.hubquant_plan
    return {
        "format": "hubquant",
        "format_version": str(FORMAT_VERSION),
        "hubquant_version": __version__,
        "recipe": json.dumps({"name": plan.recipe, "text": plan.recipe_text}),
        "config": json.dumps({"source": plan.config_source, "text": plan.config_text}),
        "plan": plan.to_json(),
        "model_config": json.dumps(
            ordered(keras.saving.serialize_keras_object(model)), sort_keys=True
        ),
        "weights": json.dumps([v.path for v in backbone.weights]),
    }


def _tensor_sources(model, backbone) -> dict[str, object]:
    """Name -> variable (read when its shard is written) or bytes."""
    sources = {v.path: v for v in backbone.weights}
    if isinstance(model, Task) and model.preprocessor is not None:
        with tempfile.TemporaryDirectory() as tmp:
            model.preprocessor.save_to_preset(tmp)
            for file in sorted(Path(tmp).rglob("*")):
                if file.is_file() and file.relative_to(tmp).parts[0] == "assets":
                    rel = file.relative_to(tmp).as_posix()
                    sources[PRESET_PREFIX + rel] = np.frombuffer(file.read_bytes(), np.uint8)
    return dict(sorted(sources.items()))


def _shards(sources: dict, max_bytes: int) -> list[dict]:
    shards, size = [{}], 0
    for name, source in sources.items():
        count = nbytes(source)
        if shards[-1] and size + count > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = source
        size += count
    return shards


def nbytes(source) -> int:
    """Bytes of an array or a variable, without reading the variable."""
    if isinstance(source, np.ndarray):
        return source.nbytes
    return int(np.prod(source.shape)) * np.dtype(source.dtype).itemsize


def _specs(shard: dict) -> dict:
    """Name -> (dtype, shape, source) with each variable read only when written."""
    return {
        name: (
            *spec_of(src),
            (lambda s=src: s if isinstance(s, np.ndarray) else keras.ops.convert_to_numpy(s)),
        )
        for name, src in shard.items()
    }


def files_and_metadata(path: Path) -> tuple[list[Path], dict]:
    if path.is_dir():
        if (path / INDEX_FILE).is_file():
            files = [path / f for f in shard_names(path / INDEX_FILE)]
        else:
            files = [path / SINGLE_FILE]
    else:
        files = [path]
    with _open(files[0]) as f:
        metadata = f.metadata() or {}
    _check_metadata(files[0], metadata)
    return files, metadata


def _open(file: Path):
    """``safe_open`` (which reads the header); unreadable files name themselves."""
    from safetensors import safe_open

    if not file.is_file():
        raise ArtefactError(f"'{file}' not found.")
    try:
        return safe_open(str(file), framework="numpy")
    except Exception as e:
        raise ArtefactError(
            f"'{file}' is truncated or corrupt: not a readable safetensors file ({e})."
        ) from None


def _check_metadata(file: Path, metadata: dict) -> None:
    if (
        metadata.get("format") != "hubquant"
        or "model_config" not in metadata
        or "weights" not in metadata
    ):
        raise ArtefactError(f"'{file}' has no hubquant metadata; it was not written by hubquant.")
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ArtefactError(
            f"'{file}' has format version {version}, newer than this hubquant understands "
            f"({FORMAT_VERSION}). Upgrade hubquant."
        )


def _write_asset(target: Path, value: np.ndarray, file: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as f:  # never through a link, never over another asset
            f.write(value.tobytes())
    except OSError as e:
        raise ArtefactError(f"'{file}': asset '{target.name}' cannot be unpacked: {e}") from None


def _read_shard(file: Path, variables: dict, assets: Path) -> set[str]:
    assigned = set()
    with _open(file) as f:
        for name in f.keys():
            value = f.get_tensor(name)
            if name.startswith(PRESET_PREFIX):
                _write_asset(asset_path(assets, name[len(PRESET_PREFIX) :], file), value, file)
                continue
            var = variables.get(name)
            if var is None or tuple(var.shape) != value.shape:
                raise ArtefactError(
                    f"'{file}': tensor '{name}' does not fit the model "
                    f"(expected {None if var is None else tuple(var.shape)}, got {value.shape})."
                )
            var.assign(value)
            assigned.add(name)
    return assigned
