"""Safe writes: all or nothing, with the user's permissions, and no leftovers.

Every file caffesolve writes (snapshots, prototxt, binaryproto) goes to a
temporary `.NAME.PID.XXXXXXXX.tmp` beside its target, is flushed to disk
(fsync) and renamed over the target; then the folder is synced, so that the
rename itself survives a power cut. A crash, a full disk or a kill leaves the
old file or the new one under the final name, never a part of one.
Temporaries are created with mode 0666 less the umask, as Caffe's
std::ofstream creates its files (and as the user's other files are made).

Several files that belong together (a snapshot's model and solver state) are
written together: every temporary first, then the renames, in order.

A temporary names the process that wrote it; one left by a process that is
gone (killed mid-write) is removed by the next writer to the same folder
(`dead_leftovers`, `remove_leftovers`). Folders (the data command's
databases) follow the same scheme with `make_temp_folder` and
`replace_folders`.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

FILE_MODE = 0o666  # less the umask, like std::ofstream and open(2)
FOLDER_MODE = 0o777  # less the umask, like mkdir(1)


def temp_path(target: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """A fresh name `.NAME.PID.XXXXXXXX{suffix}` beside `target`."""
    p = Path(target)
    return p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _create_fresh(
    target: str | os.PathLike[str], suffix: str, make: Callable[[Path], object]
) -> Path:
    """`make(name)` on a fresh temp_path name (retried if the name is taken)."""
    for _ in range(100):
        tmp = temp_path(target, suffix)
        try:
            make(tmp)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target))


def create_temp(target: str | os.PathLike[str]) -> Path:
    """Create an empty temporary file beside `target` (mode 0666 less the
    umask) and return its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    return _create_fresh(
        target, ".tmp", lambda tmp: os.close(os.open(tmp, flags, FILE_MODE))
    )


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still put on `folder`'s filesystem."""
    return shutil.disk_usage(folder).free


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to the disk. Filesystems
    that cannot sync a folder (EINVAL) are left as they are."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_temp(target: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """A complete, synced temporary for `target`, filled by `write(tmp)`; on
    any failure it is removed and the error raised."""
    tmp = create_temp(target)
    try:
        write(str(tmp))
        fsync_file(tmp)
    except BaseException:
        remove_path(tmp)
        raise
    return tmp


def write_bytes_to(tmp: str | os.PathLike[str], data: bytes) -> None:
    """`data` into the (existing) file `tmp`; ENOSPC and EIO surface here."""
    with open(tmp, "wb") as f:
        f.write(data)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Let `write(tmp)` fill a temporary file beside `path`, fsync it, then
    rename it over `path`: all or nothing. On any failure the temporary file is
    removed and `path` is as it was."""
    atomic_write_all([(path, write)])


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically (atomic_write)."""
    atomic_write(path, lambda tmp: write_bytes_to(tmp, data))


def atomic_write_all(
    items: Sequence[tuple[str | os.PathLike[str], Callable[[str], None]]],
) -> None:
    """Write several files as one: every temporary (filled by its callback)
    first, then the renames in order, then a sync of the folders.

    A failure before the renames leaves every target as it was. A target that
    is a folder is refused before anything is renamed. Should a rename still
    fail, the files this call renamed into place that did not exist before
    are taken out again, so the set stays whole.
    """
    targets = [Path(p) for p, _ in items]
    for t in targets:
        if t.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(t))
    temps: list[Path] = []
    try:
        for target, write in items:
            temps.append(write_temp(target, write))
    except BaseException:
        for tmp in temps:
            remove_path(tmp)
        raise
    existed = [t.exists() for t in targets]
    done: list[Path] = []
    try:
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
            done.append(target)
    except BaseException:
        for target, was in zip(done, existed):
            if not was:
                remove_path(target)
        for tmp in temps[len(done) :]:
            remove_path(tmp)
        raise
    for folder in {t.parent for t in targets}:
        fsync_folder(folder)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file or a folder tree; already gone is fine."""
    p = Path(path)
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    except FileNotFoundError:
        pass


def pid_alive(pid: int) -> bool:
    """True if a process `pid` runs on this machine (or cannot be told)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def writer_pid(entry: str) -> int | None:
    """The PID in a temporary's name `.NAME.PID.XXXXXXXX.SUFFIX`, if any."""
    parts = entry.rsplit(".", 3)
    if len(parts) == 4 and parts[1].isdigit():
        return int(parts[1])
    return None


def dead_leftovers(
    folder: str | os.PathLike[str],
    name_glob: str,
    suffixes: Iterable[str] = (".tmp",),
) -> list[Path]:
    """Temporaries `.{name_glob}.*{suffix}` in `folder` whose writer is gone
    (a name without a PID, from an older caffesolve, counts as gone)."""
    folder = Path(folder)
    found: list[Path] = []
    for suffix in suffixes:
        try:
            entries = sorted(folder.glob(f".{name_glob}.*{suffix}"))
        except OSError:
            return []
        for entry in entries:
            pid = writer_pid(entry.name)
            if pid is None or not pid_alive(pid):
                found.append(entry)
    return found


def remove_leftovers(
    folder: str | os.PathLike[str],
    name_glob: str,
    suffixes: Iterable[str] = (".tmp",),
) -> list[Path]:
    """Remove the dead temporaries `dead_leftovers` finds; returns them.
    Ones that cannot be removed (a read-only folder) are left."""
    removed = []
    for entry in dead_leftovers(folder, name_glob, suffixes):
        try:
            remove_path(entry)
        except OSError:
            continue
        removed.append(entry)
    return removed


def make_temp_folder(target: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
    """Create an empty folder `.NAME.PID.XXXXXXXX{suffix}` beside `target`
    (mode 0777 less the umask)."""
    return _create_fresh(target, suffix, lambda tmp: os.mkdir(tmp, FOLDER_MODE))


def replace_folders(new: dict[Path, Path]) -> None:
    """Put each complete folder `new[target]` in place of `target`, as a set.

    The new folders are first renamed `.NAME.PID.X.new` (all complete: from
    here on the set can be finished), then each old target is moved aside
    (`.old`) and its new folder renamed in, then the old ones are removed. An
    error puts the old folders back; a kill is finished by `recover_folders`.
    """
    ready = {
        t: tmp.with_name(tmp.name[: -len(tmp.suffix)] + ".new")
        for t, tmp in new.items()
    }
    for target, tmp in new.items():
        os.replace(tmp, ready[target])
    aside: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for target, new_folder in ready.items():
            if target.exists():
                old = new_folder.with_name(new_folder.name[:-4] + ".old")
                os.replace(target, old)
                aside[target] = old
            os.replace(new_folder, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            os.replace(target, ready[target])
        for target, old in aside.items():
            os.replace(old, target)
        for folder in ready.values():
            remove_path(folder)
        raise
    for target in new:
        fsync_folder(target.parent)
    for old in aside.values():
        remove_path(old)


def recover_folders(targets: Iterable[Path]) -> list[Path]:
    """Finish or undo what a killed `replace_folders` (or a killed build)
    left for `targets`: a `.tmp` folder is an unfinished build and is
    removed; a `.new` one is complete and replaces its target (the set was
    complete before the first rename); an `.old` one goes back in place if
    its target is missing, else it is removed. Returns what was handled."""
    handled: list[Path] = []
    for target in targets:
        handled += remove_leftovers(target.parent, target.name, (".tmp",))
        for new_folder in dead_leftovers(target.parent, target.name, (".new",)):
            old = temp_path(target, ".old")
            if target.exists():
                os.replace(target, old)
            os.replace(new_folder, target)
            remove_path(old)
            handled.append(new_folder)
        for old in dead_leftovers(target.parent, target.name, (".old",)):
            if target.exists():
                remove_path(old)
            else:
                os.replace(old, target)
            handled.append(old)
    return handled
