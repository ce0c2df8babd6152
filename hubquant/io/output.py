"""Write an artefact folder completely or not at all.

Everything is written into a temporary folder beside the target and renamed
into place only when complete, so an interrupted run leaves either the
previous state or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import traceback
from pathlib import Path

from hubquant.errors import OutputError, Terminated


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse an output that exists and is not empty, unless told to replace it."""
    if target.parent == target:
        raise OutputError(f"output '{target}' is a filesystem root; give a folder to write.")
    if target.exists() and not target.is_dir():
        raise OutputError(f"output '{target}' exists and is a file; give a folder path.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputError(
            f"output '{target}' exists and is not empty; pass --overwrite to replace it."
        )


@contextlib.contextmanager
def staged_output(target: str | Path, overwrite: bool = False, needs: int = 0):
    """Yield a temporary folder; on success it becomes ``target``. ``needs``: the
    bytes about to be written, checked against the free space first. Any
    ``OSError`` (a disk that fills anyway, say) becomes an ``OutputError``, and
    the staging folder and the parent folders made are removed."""
    target = Path(target).absolute()
    if target.is_symlink():  # write where the link points; the link stays
        target = target.resolve()
    check_target(target, overwrite)
    created = [p for p in target.parents if not p.exists()]  # deepest first
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(target)
        _check_space(target, needs)
        prefix = f".{target.name}.partial-{os.getpid()}-"
        stage = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    except BaseException as e:
        _remove_empty(created)  # leave nothing behind, not even the parents made
        if isinstance(e, OSError):
            raise OutputError(f"cannot write output '{target}': {reason(e)}") from None
        raise
    try:
        yield stage
        if Terminated.pending:  # raised where a C library swallowed it
            raise Terminated()
        _replace(stage, target, overwrite)
    except BaseException as e:
        _release(e)
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write output '{target}': {reason(e)}") from None
        raise


def _release(error: BaseException | None) -> None:
    """Let a failed writer's objects close their files now, while the stage exists
    (Keras leaves a temporary file open): clear the frames its errors hold."""
    while error is not None:
        traceback.clear_frames(error.__traceback__)
        error = error.__context__


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check_space(target: Path, needs: int) -> None:
    free = shutil.disk_usage(target.parent).free
    if needs + (1 << 20) > free:  # a MiB for metadata and tokenizer files
        raise OutputError(
            f"cannot write output '{target}': no space left on the device (about "
            f"{(needs + (1 << 20)) / 2**20:,.1f} MiB needed, {free / 2**20:,.1f} MiB free)"
        )


def _remove_stale(target: Path) -> None:
    """Remove staging folders of ``target`` left by runs that were killed (their
    process is gone)."""
    for kind in ("partial", "old"):
        for path in target.parent.glob(f".{target.name}.{kind}-*"):
            pid = path.name.rsplit(f".{kind}-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(stage: Path, target: Path, overwrite: bool) -> None:
    if not overwrite:
        # rename(2) replaces an empty folder and refuses a non-empty one: a
        # second run that finished first is never silently replaced.
        try:
            stage.rename(target)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            shutil.rmtree(stage, ignore_errors=True)
            raise OutputError(
                f"output '{target}' was written by someone else while this run worked; "
                "nothing was replaced. Pass --overwrite to replace it."
            ) from None
        return
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{stage.name[-8:]}")
        target.rename(old)
        stage.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(target)


def check_writable_file(path: Path, what: str) -> None:
    """Raise ``OutputError`` (``what``: its start) unless ``path`` can be written."""
    parent = path.absolute().parent
    if path.is_dir():
        raise OutputError(f"{what}: it is a folder.")
    if not parent.is_dir():
        raise OutputError(f"{what}: folder '{parent}' does not exist.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what}: permission denied (read-only location?)")


def reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EFBIG:
        return "file too large for the device or the file-size limit (ulimit -f)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only location?)"
    return e.strerror or str(e)
