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


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own bound


def _header(file: Path) -> tuple[dict, int]:
    """The tensor entries of ``file``'s header, checked as the safetensors library
    checks them: a bounded JSON object, every tensor's bytes inside the file, of
    the size its dtype and shape say, the tensors tiling the data without overlap."""
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            total = file.stat().st_size
            if size > min(MAX_HEADER_BYTES, total - 8):
                raise ArtefactError(
                    f"'{file}' is not a readable safetensors file: its header claims "
                    f"{size} bytes; the file holds {total}."
                )
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise ArtefactError(f"'{file}' is not a readable safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise ArtefactError(
            f"'{file}' is not a readable safetensors file: header is not an object."
        )
    header.pop("__metadata__", None)
    _check_layout(file, header, total - 8 - size)
    return header, 8 + size


def _check_layout(file: Path, header: dict, data_bytes: int) -> None:
    spans = []
    for name, info in header.items():
        if not (isinstance(info, dict) and _is_int_list(info.get("shape"))):
            raise ArtefactError(f"'{file}': tensor '{name}' has no valid shape.")
        offsets = info.get("data_offsets")
        if not (_is_int_list(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
            raise ArtefactError(
                f"'{file}': tensor '{name}' has invalid data_offsets. Received: {offsets!r}"
            )
        itemsize = _dtype(info.get("dtype"), file, name).itemsize
        expected = int(np.prod(info["shape"], dtype=object)) * itemsize
        if offsets[1] - offsets[0] != expected:
            raise ArtefactError(
                f"'{file}': tensor '{name}' ({info['dtype']}, shape {info['shape']}) needs "
                f"{expected} bytes; its data_offsets span {offsets[1] - offsets[0]}."
            )
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = "overlaps another tensor" if begin < end else "leaves a gap before it"
            raise ArtefactError(f"'{file}': tensor '{name}' {what} (data_offsets {begin}).")
        end = stop
    if end != data_bytes:
        raise ArtefactError(
            f"'{file}' is truncated or corrupt: its tensors cover {end} bytes; the file "
            f"holds {data_bytes} after the header."
        )


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _dtype(code, file: Path, name: str) -> np.dtype:
    if not isinstance(code, str) or code not in _DTYPES:
        raise ArtefactError(
            f"'{file}': tensor '{name}' has dtype {code}; hubquant reads {', '.join(_DTYPES)}."
        )
    if code == "BF16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_DTYPES[code])
