"""A small safetensors reader over memory maps, bfloat16 included.

The safetensors library's NumPy backend refuses bfloat16, the dtype most
published checkpoints use; this reader maps each file once and hands out
NumPy views (``ml_dtypes.bfloat16`` for BF16). A folder's tensors are found
through ``model.safetensors.index.json`` or in ``model.safetensors``.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from hubquant.errors import ArtefactError
from hubquant.io.names import shard_names

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class TensorFiles:
    """Every tensor of a folder's safetensors files, by name, read lazily."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._files: dict[Path, tuple[mmap.mmap, dict, int]] = {}
        self._where: dict[str, Path] = {}
        for file in _files(folder):
            header, start = _header(file)
            self._where.update(dict.fromkeys(header, file))

    def keys(self):
        return self._where.keys()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise ArtefactError(f"'{self.folder}': tensor '{name}' is missing.")
        buffer, header, start = self._open(self._where[name])
        info = header[name]
        dtype = _dtype(info["dtype"], self._where[name], name)
        begin, end = info["data_offsets"]
        data = np.frombuffer(
            buffer, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin
        )
        return data.reshape(info["shape"])

    def _open(self, file: Path):
        if file not in self._files:
            header, start = _header(file)
            with open(file, "rb") as f:
                buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._files[file] = (buffer, header, start)
        return self._files[file]

    def close(self) -> None:
        self._files.clear()  # the maps close when their last view goes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _files(folder: Path) -> list[Path]:
    if (folder / INDEX_FILE).is_file():
        return [folder / name for name in shard_names(folder / INDEX_FILE)]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise ArtefactError(f"'{folder}' has no {SINGLE_FILE} and no {INDEX_FILE}.")


def _header(file: Path) -> tuple[dict, int]:
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise ArtefactError(f"'{file}' is not a readable safetensors file: {e}") from None
    header.pop("__metadata__", None)
    return header, 8 + size


def _dtype(code: str, file: Path, name: str) -> np.dtype:
    if code not in _DTYPES:
        raise ArtefactError(
            f"'{file}': tensor '{name}' has dtype {code}; hubquant reads {', '.join(_DTYPES)}."
        )
    if code == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[code])
