"""A small safetensors writer: deterministic bytes, one tensor in memory at a time.

The safetensors library serialises the header's metadata in hash order, so
the same inputs could give different bytes; this writer sorts every key. It
also takes tensors lazily (a callable per name), so a large model is written
without holding a second copy of it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}

Source = Callable[[], np.ndarray]


def write_safetensors(
    path: Path, specs: dict[str, tuple[str, tuple[int, ...], Source]], metadata: dict[str, str]
) -> None:
    """Write ``specs`` (name -> (dtype name, shape, source)) in sorted name order."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    names = sorted(specs)
    for name in names:
        dtype, shape, _ = specs[name]
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(_numpy_dtype(dtype)).itemsize
        header[name] = {
            "dtype": _DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            dtype, shape, source = specs[name]
            value = np.ascontiguousarray(source())
            if value.shape != tuple(shape) or str(value.dtype) != dtype:
                raise ValueError(
                    f"tensor '{name}': expected {dtype}{list(shape)}, got {value.dtype}{list(value.shape)}"
                )
            f.write(value.tobytes())


def spec_of(value) -> tuple[str, tuple[int, ...]]:
    """(dtype name, shape) of an array or a Keras variable."""
    return str(np.dtype(value.dtype) if isinstance(value, np.ndarray) else value.dtype), tuple(
        value.shape
    )


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)
