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
