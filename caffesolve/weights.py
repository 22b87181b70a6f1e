"""Weights in and out: `.caffemodel` (a binary NetParameter) and
`.caffemodel.h5` (Caffe's HDF5 layout), Caffe's Net::CopyTrainedLayersFrom,
ToProto and ToHDF5 (net.cpp).

Loading goes by layer name: layers the file lacks keep their fillers, file
layers the net lacks are ignored, a blob count or shape mismatch is an error
naming the layer, the blob and both shapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from caffesolve.blob import proto_shape, shape_equals, shape_string
from caffesolve.errors import ConfigError, ShapeError, SnapshotError, one_line
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.proto.upgrade import (
    net_needs_upgrade,
    read_net_params_from_binary_file,
    upgrade_net_as_needed,
)

if TYPE_CHECKING:
    from caffesolve.layers.base import Layer
    from caffesolve.net import Net

T = TypeVar("T")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """True for an HDF5 file. An existing file is judged by its signature
    (H5Fis_hdf5, as CopyTrainedLayersFrom does), a file still to be written by
    the `.h5` suffix its name gets from snapshot_format (SnapshotFilename)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == _HDF5_SIGNATURE
    except FileNotFoundError:
        return str(path).endswith(".h5")
    except OSError:
        return False


def _matching_layers(
    net: Net, sources: Iterable[tuple[str, T]], line: int
) -> Iterator[tuple[str, Layer, T]]:
    """(name, the net's layer of that name, source) for each (name, source)
    the net has a layer for; the others are logged as ignored, as Caffe does
    at net.cpp:`line`."""
    for name, source in sources:
        if name not in net.layer_names_index:
            net.log_info(line, f"Ignoring source layer {name}")
            continue
        yield name, net.layers[net.layer_names_index[name]], source


def _check_blob_count(
    where: str, name: str, source: int, target: Layer, words: str = "file/net"
) -> None:
    """Caffe's "Incompatible number of blobs" check against the `target`
    layer, whose count comes with what its blobs hold (Layer.blob_roles);
    `words` names the two sides ("file/net", or "source/target" for two
    nets)."""
    if source != len(target.blobs):
        a, b = words.split("/")
        count = str(len(target.blobs))
        roles = target.blob_roles()
        if roles:
            count += f": {', '.join(roles)}"
        raise ShapeError(
            f"{where}: blobs: Incompatible number of blobs for layer {name} "
            f"({a} has {source}, {b} has {count})"
        )


def share_trained_layers(net: Net, other: Net) -> None:
    """Use `other`'s param data for the layers of the same name.

    Caffe's ShareTrainedLayersWith (a test net reading the train net's
    weights): data is shared, each net keeps its own diffs.
    """
    sources = zip(other.layer_names, other.layers)
    for name, target, source_layer in _matching_layers(net, sources, 632):
        where = f"{net.source}: layer '{name}' ({target.layer_param.type})"
        count = len(source_layer.blobs)
        _check_blob_count(where, name, count, target, words="source/target")
        for j, (t, s) in enumerate(zip(target.blobs, source_layer.blobs)):
            if t.shape != s.shape:
                raise ShapeError(
                    f"{net.source}: Cannot share param {j} weights from layer "
                    f"'{name}'; shape mismatch.  Source param shape is "
                    f"{s.shape_string()}; target param shape is "
                    f"{t.shape_string()}"
                )
            t.share_data(s)


def load_weights(net: Net, path: str | os.PathLike[str]) -> None:
    """Copy trained layers (by name) from a .caffemodel or .caffemodel.h5."""
    if not Path(path).exists():
        raise SnapshotError(f"{path}: weights file not found")
    copy_trained_layers_from(net, str(path))


def copy_trained_layers_from(
    net: Net, param_or_path: caffe_pb2.NetParameter | str | os.PathLike[str]
) -> None:
    """Load weights by layer name (Caffe's CopyTrainedLayersFrom).

    A binary NetParameter (.caffemodel, V1 `layers` upgraded) or an HDF5
    file (.caffemodel.h5: /data/<layer>/<i>). Layers the file lacks keep
    their fillers; file layers the net lacks are ignored. A blob count or
    shape mismatch is an error naming the layer, the blob and both shapes.
    """
    if isinstance(param_or_path, caffe_pb2.NetParameter):
        origin = "<NetParameter>"
        param = param_or_path
        if net_needs_upgrade(param):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(param_or_path)
            upgrade_net_as_needed(param, origin)
    else:
        origin = str(param_or_path)
        if is_hdf5(param_or_path):
            copy_trained_layers_from_hdf5(net, param_or_path)
            return
        param = read_net_params_from_binary_file(param_or_path)
    sources = ((lp.name, lp) for lp in param.layer)
    for name, target, source_layer in _matching_layers(net, sources, 746):
        where = f"{origin}: layer '{name}' ({target.layer_param.type})"
        _check_blob_count(where, name, len(source_layer.blobs), target)
        for j, (blob, proto) in enumerate(zip(target.blobs, source_layer.blobs)):
            file_shape = proto_shape(proto)
            if not shape_equals(file_shape, blob.shape):
                raise ShapeError(
                    f"{where}: Cannot copy param {j} weights from layer "
                    f"'{name}'; shape mismatch.  Source param shape is "
                    f"{shape_string(file_shape)}; target param shape is "
                    f"{blob.shape_string()}. To learn this layer's parameters "
                    "from scratch rather than copying from a saved net, "
                    "rename the layer."
                )
            try:
                blob.from_proto(proto, reshape=False)
            except ShapeError as e:
                raise ShapeError(f"{where}: param {j}: {e}") from None
    warn_if_nothing_copied(net, origin, [lp.name for lp in param.layer])


def warn_if_nothing_copied(net: Net, origin: str, names: list[str]) -> None:
    """Caffe copies by layer name and says nothing when no name matches; a
    user who meant to finetune would want to know that no weight came over."""
    learnable = [n for n, layer in zip(net.layer_names, net.layers) if layer.blobs]
    if not learnable or set(names) & set(learnable) or net.quiet:
        return
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    LOG.warning(
        "net.cpp:0",
        f"{origin}: no layer of this file has the name of a layer of the net "
        f"with weights, so no weight was copied (the file's layers: "
        f"{shown or 'none'}; the net's: {', '.join(learnable)})",
    )


def copy_trained_layers_from_hdf5(net: Net, path: str | os.PathLike[str]) -> None:
    """Weights from Caffe's HDF5 layout: /data/<layer name>/<blob index>."""
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is an extra
        raise ConfigError(
            f"{path}: reading HDF5 weights needs h5py (pip install h5py)"
        ) from None
    try:
        _copy_from_hdf5(net, path, h5py)
    except OSError as e:
        raise SnapshotError(
            f"{path}: cannot read this HDF5 file: {one_line(str(e))}; copy it "
            "again, or use another snapshot"
        ) from None


def _copy_from_hdf5(net: Net, path: str | os.PathLike[str], h5py: Any) -> None:
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise ConfigError(f"{path}: Error reading weights (no /data group)")
        data = f["data"]
        warn_if_nothing_copied(net, str(path), list(data))
        sources = ((name, data[name]) for name in data)
        for name, target, group in _matching_layers(net, sources, 801):
            layer_id = net.layer_names_index[name]
            where = f"{path}: layer '{name}' ({target.layer_param.type})"
            if len(group) > len(target.blobs):
                _check_blob_count(where, name, len(group), target)
            for j, blob in enumerate(target.blobs):
                if str(j) not in group:
                    net_param_id = net.param_id_vecs[layer_id][j]
                    if net.param_owners[net_param_id] != -1:
                        continue  # shared: the owner's dataset fills it
                    raise ShapeError(
                        f"{where}: Incompatible number of blobs for layer "
                        f"{name} (no dataset {j} in the file)"
                    )
                dataset = group[str(j)]
                if tuple(dataset.shape) != blob.shape:
                    raise ShapeError(
                        f"{where}: Cannot load blob from hdf5; shape mismatch. "
                        f"Source shape is {shape_string(dataset.shape)} target "
                        f"shape is {blob.shape_string()}"
                    )
                blob.data[...] = dataset[()]


def net_to_proto(net: Net, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """The net as a NetParameter with every layer's blobs (Caffe's ToProto).

    Each layer contributes a copy of its LayerParameter (the one the net
    ran, with phase, Split layers included) with its blobs in place of any
    the definition had; written out, this is a .caffemodel Caffe loads.
    """
    param = caffe_pb2.NetParameter()
    param.name = net.name
    for layer in net.layers:
        lp = param.layer.add()
        lp.CopyFrom(layer.layer_param)
        del lp.blobs[:]
        for blob in layer.blobs:
            lp.blobs.add().CopyFrom(blob.to_proto(write_diff))
    return param


def net_to_hdf5(
    net: Net, path: str | os.PathLike[str] | BinaryIO, write_diff: bool = False
) -> None:
    """Caffe's ToHDF5: /data/<layer>/<i> for params each layer owns, and
    /diff/<layer>/<i> for every param if write_diff. `path` may be a file
    object (io.BytesIO: snapshots are built in memory, then written)."""
    import h5py

    target = path if hasattr(path, "write") else Path(path)  # type: ignore[arg-type]
    with h5py.File(target, "w") as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for layer_id, (layer, name) in enumerate(zip(net.layers, net.layer_names)):
            layer_data = data.create_group(name)
            layer_diff = diff.create_group(name) if diff is not None else None
            for j in range(len(layer.blobs)):
                net_param_id = net.param_id_vecs[layer_id][j]
                blob = net.params[net_param_id]
                if net.param_owners[net_param_id] == -1:
                    layer_data.create_dataset(str(j), data=blob.data)
                if layer_diff is not None:
                    layer_diff.create_dataset(str(j), data=blob.diff)
