"""caffesolve.files: writes that are all or nothing, and the leftovers of a
killed writer (the end-to-end faults are in test_faults_*.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from caffesolve import files


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write(text: str) -> Callable[[str], None]:
    return lambda tmp: Path(tmp).write_text(text)


def test_a_failed_write_changes_no_target(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write_all([(a, write("new a")), (b, fail)])
    assert a.read_text() == "old a" and not b.exists()
    assert os.listdir(tmp_path) == ["a"]


def test_a_failed_second_rename_takes_the_first_new_file_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The set stays whole: the model renamed into place is removed again
    when its state cannot follow (neither existed before)."""
    real = os.replace
    calls = []

    def replace(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output"):
        files.atomic_write_all(
            [(tmp_path / "m", write("model")), (tmp_path / "s", write("state"))]
        )
    assert os.listdir(tmp_path) == []


def test_leftovers_of_dead_writers_only(tmp_path: Path) -> None:
    mine = tmp_path / f".x_iter_5.caffemodel.{os.getpid()}.0a1b2c3d.tmp"
    dead = tmp_path / f".x_iter_5.caffemodel.{dead_pid()}.0a1b2c3d.tmp"
    legacy = tmp_path / ".x_iter_5.caffemodel.k2j4h1gq.tmp"  # mkstemp's, no PID
    other = tmp_path / f".y_iter_5.caffemodel.{dead_pid()}.0a1b2c3d.tmp"
    for p in (mine, dead, legacy, other):
        p.write_text("")
    assert files.remove_leftovers(tmp_path, "x_iter_*") == sorted([dead, legacy])
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, other.name])


def test_recover_folders_finishes_or_undoes(tmp_path: Path) -> None:
    """A complete `.new` replaces its target; an `.old` whose target is
    missing goes back; a `.tmp` (an unfinished build) is removed."""
    pid = dead_pid()
    a, b, c = tmp_path / "a_lmdb", tmp_path / "b_lmdb", tmp_path / "c_lmdb"
    a.mkdir()
    (a / "v").write_text("old a")
    new_a = tmp_path / f".a_lmdb.{pid}.00000000.new"
    new_a.mkdir()
    (new_a / "v").write_text("new a")
    old_b = tmp_path / f".b_lmdb.{pid}.00000000.old"
    old_b.mkdir()
    (old_b / "v").write_text("old b")
    tmp_c = tmp_path / f".c_lmdb.{pid}.00000000.tmp"
    tmp_c.mkdir()
    files.recover_folders([a, b, c])
    assert sorted(os.listdir(tmp_path)) == ["a_lmdb", "b_lmdb"]
    assert (a / "v").read_text() == "new a" and (b / "v").read_text() == "old b"
