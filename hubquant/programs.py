"""Compiled XLA programs kept between runs.

Compiling the int4 slab programs takes longer than running them: on a 2-core
machine 0.3 s for the clip search and 0.13 s without, against a 1 s int4
quantize of a 100M-parameter model. Each is compiled once per machine and
kept in ``$HUBQUANT_CACHE/programs`` (default ``~/.cache/hubquant``, where the
compiled products live too), named by a hash of everything that shapes the
executable: the source of the module that defines it, JAX's and jaxlib's
versions, ``XLA_FLAGS``, the CPU and its flags, the arguments' shapes and
dtypes and the static options. Later runs load it in about 10 ms.

Only JAX on the CPU keeps programs (what was measured); elsewhere, or where a
kept file cannot be read or written, the program is compiled as usual. The
folder is the user's own, like the compiled products beside it: what it holds
is loaded as machine code.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from pathlib import Path

import jax
import jaxlib
import numpy as np


def cache_folder() -> Path:
    """``$HUBQUANT_CACHE``, else ``~/.cache/hubquant``."""
    return Path(os.environ.get("HUBQUANT_CACHE") or Path.home() / ".cache" / "hubquant")


def program_folder() -> Path:
    """Where compiled programs are kept: ``programs`` in ``cache_folder()``."""
    return cache_folder() / "programs"


def kept() -> int:
    """How many compiled programs ``program_folder()`` holds."""
    folder = program_folder()
    return len(list(folder.glob(f"*{_SUFFIX}"))) if folder.is_dir() else 0


_SUFFIX = ".xla"


def cpu_identity() -> str:
    """What code compiled for this CPU depends on: the machine and its flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def compiled(jitted, source: str, args: tuple, **statics):
    """``jitted`` (a ``jax.jit`` function defined in the file ``source``)
    compiled for ``args`` (arrays, by shape and dtype) and ``statics``: loaded
    from the cache where kept, else compiled and kept."""
    if jax.default_backend() != "cpu":
        return jitted.lower(*args, **statics).compile()
    path = program_folder() / f"{_key(jitted, source, args, statics)}{_SUFFIX}"
    program = _load(path, args)
    if program is None:
        program = jitted.lower(*args, **statics).compile()
        _keep(program, path, args)
    return program


def _key(jitted, source: str, args: tuple, statics: dict) -> str:
    key = hashlib.sha256(Path(source).read_bytes())
    shapes = [(np.shape(a), np.dtype(a.dtype).name) for a in args]
    parts = (
        getattr(jitted, "__qualname__", repr(jitted)),
        repr(shapes),
        repr(sorted(statics.items())),
        jax.__version__,
        jaxlib.__version__,
        os.environ.get("XLA_FLAGS", ""),
        str(_device()),
        cpu_identity(),
    )
    for part in parts:
        key.update(b"\0" + part.encode())
    return key.hexdigest()[:24]


def _device():
    """Where ``jax.jit`` runs a program whose arguments are not on a device."""
    default = jax.config.jax_default_device
    return default if isinstance(default, jax.Device) else jax.local_devices()[0]


def _trees(args: tuple):
    """The call's argument structure: positional arrays only (the results, a
    flat tuple of arrays, are rebuilt from their count)."""
    return jax.tree_util.tree_structure((tuple(args), {}))


def _load(path: Path, args: tuple):
    from jax.experimental import serialize_executable

    try:
        payload = path.read_bytes()
        count, payload = int.from_bytes(payload[:4], "little"), payload[4:]
        out_tree = jax.tree_util.tree_structure(tuple(range(count)))
        return serialize_executable.deserialize_and_load(
            payload, _trees(args), out_tree, execution_devices=[_device()]
        )
    except Exception:  # noqa: BLE001 -- absent, stale or unreadable: compile instead
        return None


def _keep(program, path: Path, args: tuple) -> None:
    """Write ``program`` to ``path`` (a temporary name, then renamed into
    place); programs of another call shape are not kept."""
    from jax.experimental import serialize_executable

    try:
        payload, in_tree, out_tree = serialize_executable.serialize(program)
        count = out_tree.num_leaves
        if in_tree != _trees(args) or out_tree != jax.tree_util.tree_structure(tuple(range(count))):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = tempfile.NamedTemporaryFile(dir=path.parent, delete=False)
    except Exception:  # noqa: BLE001 -- a cache that cannot be written only costs time
        return
    try:
        with scratch:
            scratch.write(count.to_bytes(4, "little") + payload)
        os.replace(scratch.name, path)
    except OSError:  # a full disk: no half-written file is left
        Path(scratch.name).unlink(missing_ok=True)
