"""Compiled CPU products of float rows with int8 or int4 codes.

XLA's CPU backend cannot read packed int4 codes inside a dot: every form of the
product written in XLA operations either writes a float copy of the matrix or
runs a reduction 2-3x slower than the float dot, so int4 decoded slower than
float. ``rows.cc`` beside this file holds two XLA FFI custom calls that read
the codes as stored (int4: each byte split into its two nibbles in registers,
summed against the even and odd input elements, one scale per group; int8: one
scale per row), in float32, with the output rows split over XLA's intra-op
threads. ``tiles.cc`` holds their many-row twins (a prefill): panels of the
matrix decoded into cache, then multiplied with every row. ``amx.cc`` holds
the many-row products on Intel AMX tiles (integer arithmetic on 8-bit parts of
the input that keep about 15 bits of it), taken where the CPU has AMX-INT8 and
the kernel lets the process use it (``HUBQUANT_AMX=0`` turns them off).

The sources are compiled on first use with the machine's C++ compiler (``$CXX``,
else ``c++``) for this CPU, into ``$HUBQUANT_CACHE`` (default
``~/.cache/hubquant``), named by a hash of everything that shapes the binary,
and loaded from there afterwards. Products take the XLA forms of
``products.py`` instead where no compiler works (one warning says so), with
``HUBQUANT_NATIVE=0``, on any backend but JAX on the CPU, and under an active
``keras.distribution`` (a custom call would gather sharded codes onto every
device). Gradients with respect to the input flow through the dequantized
matrix, so LoRA training on few rows works too.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np

from hubquant import programs

SOURCES = tuple(Path(__file__).with_name(name) for name in ("rows.cc", "tiles.cc", "amx.cc"))
HEADERS = (Path(__file__).with_name("tasks.h"),)
TARGETS = (
    "hubquant_int4_rows",
    "hubquant_int8_rows",
    "hubquant_int4_tiles",
    "hubquant_int8_tiles",
    "hubquant_int4_amx",
    "hubquant_int8_amx",
)
# Sums may be reordered (so loops vectorize), but not -ffast-math: linked into a
# shared library it sets the CPU to flush subnormals to zero for the whole
# process (numpy included) as soon as the library loads.
_FLAGS = (
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-w",
)


def available() -> bool:
    """Whether few-row products take the compiled custom calls here and now."""
    if keras.config.backend() != "jax" or os.environ.get("HUBQUANT_NATIVE") == "0":
        return False
    if keras.distribution.distribution() is not None:
        return False
    import jax

    return jax.default_backend() == "cpu" and _registered()


def amx() -> bool:
    """Whether many-row products take the AMX tile calls (``amx.cc``): the
    library was built for a CPU with AMX-INT8 and the kernel lets this process
    use its tiles; ``HUBQUANT_AMX=0`` turns them off."""
    return available() and os.environ.get("HUBQUANT_AMX") != "0" and _amx_granted()


@functools.cache
def _amx_granted() -> bool:
    return bool(_library().hubquant_amx_ready())


def int4_amx_call(x, codes, scale, zero, block: int):
    """``int4_tiles_call`` on AMX tiles, the input cut into blocks of ``block``
    inputs (its groups; a multiple of 64) of two int8 parts each."""
    return _call("hubquant_int4_amx", x, codes, x, codes, scale, zero, block=np.int64(block))


def int8_amx_call(x, codes, scale, block: int):
    """``int8_tiles_call`` on AMX tiles (blocks of ``block`` inputs)."""
    return _call("hubquant_int8_amx", x, codes, x, codes, scale, block=np.int64(block))


def int4_call(x, codes, scale, group_bytes: int):
    """``x @ W.T`` without zero points, for at most 16 float32 rows ``x``
    ``[M, 2w]`` (zero past ``K``) and int4 ``codes`` ``[N, w]`` (two codes a
    byte) with ``scale`` ``[N, groups]``, each group ``group_bytes`` bytes (the
    last may be short)."""
    pairs = x.reshape(x.shape[0], -1, 2)
    bytes_ = np.int64(group_bytes)
    even, odd = pairs[..., 0], pairs[..., 1]
    return _call("hubquant_int4_rows", x, codes, even, odd, codes, scale, group_bytes=bytes_)


def int8_call(x, codes, scale):
    """``x @ (codes * scale[:, None]).T`` for at most 16 float32 rows ``x`` ``[M, K]``."""
    return _call("hubquant_int8_rows", x, codes, x, codes, scale)


def int4_tiles_call(x, codes, scale, zero, group_bytes: int):
    """``x @ W.T`` for any number of float32 rows ``x`` ``[M, 2w]`` (zero past
    ``K``), zero points ``[N, groups]`` included (compute-bound: panels of the
    matrix decoded into cache, then multiplied with every row)."""
    bytes_ = np.int64(group_bytes)
    return _call("hubquant_int4_tiles", x, codes, x, codes, scale, zero, group_bytes=bytes_)


def int8_tiles_call(x, codes, scale):
    """``int8_call`` for any number of rows."""
    return _call("hubquant_int8_tiles", x, codes, x, codes, scale)


def _call(target: str, x, codes, *args, **attributes):
    """The custom call ``target`` on ``args``: float32 ``[rows of x, rows of codes]``."""
    import jax

    out = jax.ShapeDtypeStruct((x.shape[0], codes.shape[0]), "float32")
    return jax.ffi.ffi_call(target, out)(*args, **attributes)


def with_input_gradient(call, matrix):
    """``call(x, codes, scale, ...)`` whose gradient with respect to ``x`` is
    ``g @ matrix(codes, scale, ...)`` (codes, scales and zero points are
    constants, as quantized variables are)."""
    import jax

    product = jax.custom_vjp(call)

    def forward(x, *parts):
        return call(x, *parts), parts

    def backward(parts, g):
        return g @ matrix(*parts), *(None for _ in parts)

    product.defvjp(forward, backward)
    return product


@functools.cache
def _registered() -> bool:
    """Build (or find) the library and register its calls with XLA, once."""
    import jax

    library = _library()
    if library is None:
        return False
    for name in TARGETS:
        capsule = jax.ffi.pycapsule(getattr(library, name))
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    return True


@functools.cache
def _library():
    """The loaded library, or None (with one warning) where it cannot be built."""
    import ctypes

    try:
        return ctypes.cdll.LoadLibrary(str(_built()))
    except (OSError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"hubquant: the compiled decode products are unavailable ({error}); "
            "int4 and int8 decoding take the slower XLA path.",
            stacklevel=2,
        )
        return None


def _built() -> Path:
    """The compiled library, compiled now if this source, compiler and CPU
    have none yet (written to a temporary name, then renamed into place)."""
    import jax
    import jaxlib

    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise OSError("no C++ compiler found (set CXX)")
    key = hashlib.sha256()
    parts = [*(f.read_bytes() for f in SOURCES + HEADERS), jaxlib.__version__, compiler]
    for part in (*parts, " ".join(_FLAGS)):
        key.update(part if isinstance(part, bytes) else part.encode())
    key.update(programs.cpu_identity().encode())
    target = programs.cache_folder() / "native" / f"rows-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        sources = [str(source) for source in SOURCES]
        command = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", *sources, "-o", str(built)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise OSError(f"{Path(compiler).name} failed: {done.stderr.strip()[-300:]}")
        os.replace(built, target)
    return target
