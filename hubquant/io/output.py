"""Write an artefact folder completely or not at all.

Everything is written into a temporary folder beside the target and renamed
into place only when complete, so an interrupted run leaves either the
previous state or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
from pathlib import Path

from hubquant.errors import OutputError


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse an output that exists and is not empty, unless told to replace it."""
    if target.exists() and not target.is_dir():
        raise OutputError(f"output '{target}' exists and is a file; give a folder path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputError(
            f"output '{target}' exists and is not empty; pass --overwrite to replace it."
        )


@contextlib.contextmanager
def staged_output(target: str | Path, overwrite: bool = False):
    """Yield a temporary folder; on success it becomes ``target``."""
    target = Path(target).absolute()
    check_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    except OSError as e:
        raise OutputError(f"cannot write output '{target}': {reason(e)}") from None
    try:
        yield stage
        _replace(stage, target)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise OutputError(f"cannot write output '{target}': {reason(e)}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _replace(stage: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old-{stage.name[-8:]}")
        target.rename(old)
        stage.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(target)


def reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only location?)"
    return e.strerror or str(e)
