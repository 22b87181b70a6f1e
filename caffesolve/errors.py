"""The errors caffesolve raises for bad user input.

Library code raises these; only cli.py turns them into one-line messages and a
non-zero exit. Messages start with the place at fault (file[:line[:col]], then
layer and field) and say what would fix it.
"""

from __future__ import annotations


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
