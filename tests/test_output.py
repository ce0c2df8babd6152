"""Writing an artefact folder: all or nothing, never over someone else's, no leftovers."""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from hubquant import cli
from hubquant.errors import OutputError
from hubquant.io.output import staged_output


def test_a_run_never_replaces_an_output_another_run_finished_first(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputError) as caught:
        with staged_output(target) as stage:
            (stage / "mine.txt").write_text("second run")
            target.mkdir()  # the other run renames its folder into place first
            (target / "theirs.txt").write_text("first run")
    assert str(caught.value) == (
        f"output '{target}' was written by someone else while this run worked; nothing was "
        "replaced. Pass --overwrite to replace it."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]


def test_an_empty_output_folder_is_filled(tmp_path):
    (tmp_path / "out").mkdir()
    with staged_output(tmp_path / "out") as stage:
        (stage / "a.txt").write_text("a")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.txt"]


def test_staging_folders_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    for name in (f".out.partial-{dead}-abc", f".out.old-{dead}-abc", f".other.partial-{dead}-x"):
        (tmp_path / name).mkdir()
    live = tmp_path / f".out.partial-{os.getpid()}-live"
    live.mkdir()
    with staged_output(tmp_path / "out") as stage:
        (stage / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, f".other.partial-{dead}-x", "out"]
    )


def test_output_given_as_a_link_is_written_through_it(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real)
    with staged_output(link, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert link.is_symlink() and link.resolve() == real
    assert [p.name for p in real.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_a_filesystem_root_is_refused_up_front():
    with pytest.raises(OutputError, match="output '/' is a filesystem root"):
        with staged_output("/", overwrite=True):
            pytest.fail("a stage was created")


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """Writes past ``limit`` bytes of any file fail (EFBIG), as writes to a full
    disk do (ENOSPC): in hubquant, Keras, zipfile and HDF5 alike."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the signal would kill us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _low_memory(monkeypatch):
    """Keras writes a .keras file's HDF5 weights to a file in the stage first."""
    from keras.src.saving import saving_lib

    monkeypatch.setattr(saving_lib, "is_memory_sufficient", lambda model: False)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "fmt, prepare",
    [
        ("preset", None),  # HDF5 weights (KerasHub's save_weights)
        ("keras", None),  # a zip written by Python, the HDF5 weights in memory
        ("keras", _low_memory),  # the HDF5 weights in a file first
        ("safetensors", None),
        ("hf", None),
    ],
    ids=["preset", "keras", "keras_low_memory", "safetensors", "hf"],
)
def test_a_disk_filling_mid_write_ends_in_one_line(
    fmt, prepare, tmp_path, capsys, monkeypatch, float_presets
):
    """The free-space check passes, then a write fails inside the writer: exit 2,
    one line, no staging folder, no parent folder made. (HDF5 writing on its own
    crashed the process here, and would crash pytest: a segmentation fault.)"""
    if prepare is not None:
        prepare(monkeypatch)
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "small" / "out"
    argv = ["apply", "--preset", str(float_presets["gemma"]), "--config", "int8"]
    with _file_size_limit(100_000):  # the artefact's weights are 200-500 KB
        code = cli.main([*argv, "--output", str(out), "--format", fmt, "--quiet"])
    gc.collect()  # objects a failed write left open would complain now (an error)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == (
        f"hubquant: error: cannot write output '{out}': file too large for the device "
        "or the file-size limit (ulimit -f)\n"
    )
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_report_on_a_full_disk_ends_in_one_line(tmp_path, capsys, float_presets):
    argv = ["apply", "--preset", str(float_presets["gemma"]), "--config", "int8", "--quiet"]
    code = cli.main([*argv, "--output", str(tmp_path / "out"), "--report", "/dev/full"])
    assert code == 2
    assert capsys.readouterr().err == (
        "hubquant: error: cannot write report '/dev/full': no space left on the device\n"
    )
    assert (tmp_path / "out" / "model.weights.h5").is_file()  # the artefact is complete


_FULL_DISK_RUNS = """
import os, sys
from keras.src.saving import saving_lib
from hubquant import cli
from hubquant.io import output

output._check_space = lambda target, needs: None  # the disk fills after the check
saving_lib.is_memory_sufficient = lambda model: False  # .keras: HDF5 weights in a file first
preset, disk = sys.argv[1:]
for fmt in ("preset", "keras"):
    argv = ["apply", "--preset", preset, "--config", "int8", "--format", fmt, "--quiet"]
    code = cli.main([*argv, "--output", f"{disk}/small/out"])
    print(fmt, code, os.listdir(disk))
"""


@pytest.mark.slow
def test_a_real_full_disk_ends_in_one_line(tmp_path, float_presets):
    """The issue's case on a 200 KB tmpfs (a user and mount namespace of its own):
    every write past the free space fails with ENOSPC, also while HDF5 closes
    its file. One fresh process, since a regression here is a segmentation fault."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=200k tmpfs "$0" && exec "$@"']
    if (
        shutil.which("unshare") is None
        or subprocess.run([*mount, str(disk), "true"], capture_output=True).returncode
    ):
        pytest.skip("needs unshare and mount in a user namespace")
    result = subprocess.run(
        [
            *mount,
            str(disk),
            sys.executable,
            "-c",
            _FULL_DISK_RUNS,
            str(float_presets["gemma"]),
            str(disk),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "preset 2 []\nkeras 2 []\n"
    line = f"hubquant: error: cannot write output '{disk}/small/out': no space left on the device\n"
    assert result.stderr == line * 2
