"""The errors caffesolve raises for bad user input.

Library code raises these; only the command line (caffesolve.cli) turns them
into one-line messages and a non-zero exit. Messages start with the place at
fault (file[:line[:col]], then layer and field) and say what would fix it.
"""

from __future__ import annotations

import os
import re


class CaffesolveError(Exception):
    """Base class of every user-facing error."""


class ConfigError(CaffesolveError):
    """A prototxt, solver field or net definition is invalid."""


class ShapeError(CaffesolveError):
    """Blob shapes do not fit together (names the layer and blob)."""


class DataError(CaffesolveError):
    """A data source (LMDB, HDF5, IDX file) is missing or corrupt."""


class SnapshotError(CaffesolveError):
    """A snapshot cannot be written or restored."""


class RunError(CaffesolveError):
    """Something failed while a net ran or a run wrote its files: a layer's
    forward or backward, a file that became unreadable, a full disk. The
    original exception is the cause (`caffesolve --debug` shows it)."""


def describe(e: BaseException) -> str:
    """What went wrong, in one line: our own messages as they are, an OS
    error as `file: reason` (h5py's multi-line texts reduced to the errno's
    words), anything else as `TypeName: message`."""
    if isinstance(e, CaffesolveError):
        text = str(e)
    elif isinstance(e, OSError) and e.errno:
        reason = os.strerror(e.errno)
        text = f"{e.filename}: {reason}" if e.filename else reason
    elif isinstance(e, MemoryError):
        text = f"out of memory ({e})" if str(e) else "out of memory"
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return one_line(text)


def one_line(text: str) -> str:
    """`text` with its line breaks (and the blanks around them) as one space."""
    return re.sub(r"\s*\n\s*", " ", text).strip()


class ExportError(CaffesolveError):
    """A net has no exact form in the target format (names the layer)."""


class MissingExtraError(CaffesolveError):
    """An optional part is used without the extra that installs it."""


def require_extra(module: str, extra: str, purpose: str) -> None:
    """Raise MissingExtraError naming `extra` unless `module` imports.

    `purpose` says what needs it: "caffesolve export needs onnx".
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} (not installed): pip install 'caffesolve[{extra}]'"
        ) from None
