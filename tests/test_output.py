"""Writing an artefact folder: all or nothing, never over someone else's, no leftovers."""

from __future__ import annotations

import os

import pytest

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
