"""pycaffe's caffe.Net: dict views over a caffesolve Net's names and blobs
(python/caffe/pycaffe.py over _caffe.cpp's Net).

    net = caffe.Net('deploy.prototxt', caffe.TEST, weights='w.caffemodel')
    net = caffe.Net('deploy.prototxt', 'w.caffemodel', caffe.TEST)  # legacy
    net.blobs['data'].data[...] = image      # feeds the net
    out = net.forward()                       # {output name: live array}
    net.params['conv1'][0].data               # the layer's weights

`net.blobs` and `net.params` are ordered dicts of the Net's own Blob
objects, so `.data` / `.diff` are the arrays the layers compute in: a
reference kept across forward() sees the new values, and a loss blob is 0-d.
Everything runs through the caffesolve Net underneath (`net._net`); a solver's
nets (`solver.net`, `solver.test_nets`) are the same face over its nets.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from itertools import zip_longest
from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve import weights
from caffesolve.backend import configure_blas_threads
from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers.python import PythonLayer
from caffesolve.log import LOG
from caffesolve.net import Net as CoreNet
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import suggest, write_binaryproto
from caffesolve.pycaffe.runtime import random_generator

PathLike = str | os.PathLike[str]
Arrays = dict[str, npt.NDArray[Any]]

_ARGS = ("phase", "level", "stages", "weights")


def _net_args(
    network_file: PathLike, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[int, int, list[str], str | None, bool]:
    """(phase, level, stages, weights, legacy) from pycaffe's two constructors:
    Net(file, phase, level=0, stages=None, weights=None) and the legacy
    Net(file, weights, phase)."""
    unknown = set(kwargs) - set(_ARGS)
    if unknown:
        raise TypeError(f"caffe.Net() got unexpected arguments: {sorted(unknown)}")
    legacy = bool(args) and isinstance(args[0], (str, bytes, os.PathLike))
    if legacy:
        if len(args) != 2 or kwargs:
            raise TypeError(
                "the legacy caffe.Net(network_file, weights, phase) takes exactly "
                "those three arguments"
            )
        values = {"weights": os.fsdecode(args[0]), "phase": args[1]}
    else:
        if len(args) > len(_ARGS):
            raise TypeError("caffe.Net(network_file, phase, level, stages, weights)")
        values = dict(zip(_ARGS, args))
        for name, value in kwargs.items():
            if name in values:
                raise TypeError(f"caffe.Net() got multiple values for '{name}'")
            values[name] = value
    phase = values.get("phase")
    if phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        raise ConfigError(
            f"{network_file}: caffe.Net needs the phase, caffe.TRAIN or caffe.TEST "
            f"(got {phase!r}): caffe.Net(network_file, caffe.TEST, weights=...)"
        )
    stages = values.get("stages")
    weights_file = values.get("weights")
    return (
        int(phase),
        int(values.get("level") or 0),
        [str(s) for s in (stages or [])],
        os.fspath(weights_file) if weights_file is not None else None,
        legacy,
    )


class Net:
    """pycaffe's Net: a caffesolve Net seen through pycaffe's names."""

    _net: CoreNet

    def __init__(self, network_file: PathLike, *args: Any, **kwargs: Any) -> None:
        """Net(network_file, phase, level=0, stages=None, weights=None), or the
        legacy Net(network_file, weights, phase); level and stages select
        layers by their include/exclude rules, as in Caffe."""
        phase, level, stages, weights_file, legacy = _net_args(
            network_file, args, kwargs
        )
        if legacy:  # Caffe's Net_Init_Load warns the same way
            LOG.warning(
                "_caffe.cpp:139", "DEPRECATION WARNING - deprecated use of Python "
                "interface"
            )  # fmt: skip
            LOG.warning(
                "_caffe.cpp:140", 'Use this instead (with the named "weights" '
                "parameter):"
            )  # fmt: skip
            LOG.warning(
                "_caffe.cpp:142",
                f"Net('{os.fspath(network_file)}', {phase}, weights='{weights_file}')",
            )
        configure_blas_threads()  # the threads policy every command applies
        self._net = CoreNet.from_prototxt(
            network_file, phase, stages=stages, level=level, rng=random_generator()
        )
        if weights_file is not None:
            weights.load_weights(self._net, weights_file)

    @classmethod
    def _of(cls, net: CoreNet) -> Net:
        """The face over a Net built elsewhere (a solver's train and test nets)."""
        face = cls.__new__(cls)
        face._net = net
        return face

    # -- names and blobs, as ordered dicts ---------------------------------------------

    @property
    def name(self) -> str:
        return self._net.name

    @property
    def _blobs(self) -> list[Blob]:
        return self._net.blobs

    @property
    def _blob_names(self) -> list[str]:
        return self._net.blob_names

    @property
    def _layer_names(self) -> list[str]:
        return self._net.layer_names

    @property
    def _blob_loss_weights(self) -> list[float]:
        return self._net.blob_loss_weights

    @property
    def _inputs(self) -> list[int]:
        return self._net.input_blob_indices

    @property
    def _outputs(self) -> list[int]:
        return self._net.output_blob_indices

    def _bottom_ids(self, i: int) -> list[int]:
        return self._net.bottom_id_vecs[i]

    def _top_ids(self, i: int) -> list[int]:
        return self._net.top_id_vecs[i]

    @cached_property
    def blobs(self) -> OrderedDict[str, Blob]:
        """Every blob by name, input to output (in-place layers add none)."""
        return OrderedDict(zip(self._net.blob_names, self._net.blobs))

    @cached_property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        return OrderedDict(zip(self._net.blob_names, self._net.blob_loss_weights))

    @cached_property
    def layers(self) -> list[Any]:
        """The layers in order: each has .type, .blobs, .reshape; a Python
        layer is the user's own object."""
        return [
            layer.py if isinstance(layer, PythonLayer) else layer
            for layer in self._net.layers
        ]

    @cached_property
    def layer_dict(self) -> OrderedDict[str, Any]:
        return OrderedDict(zip(self._net.layer_names, self.layers))

    @cached_property
    def params(self) -> OrderedDict[str, list[Blob]]:
        """Each layer with learnable blobs: its list of blobs (weights, bias)."""
        return OrderedDict(
            (name, layer.blobs)
            for name, layer in zip(self._net.layer_names, self._net.layers)
            if layer.blobs
        )

    @cached_property
    def inputs(self) -> list[str]:
        return [self._net.blob_names[i] for i in self._net.input_blob_indices]

    @cached_property
    def outputs(self) -> list[str]:
        return [self._net.blob_names[i] for i in self._net.output_blob_indices]

    def _names_by_layer(self, ids: list[list[int]]) -> OrderedDict[str, list[str]]:
        names = self._net.blob_names
        return OrderedDict(
            (layer, [names[j] for j in blob_ids])
            for layer, blob_ids in zip(self._net.layer_names, ids)
        )

    @cached_property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return self._names_by_layer(self._net.top_id_vecs)

    @cached_property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return self._names_by_layer(self._net.bottom_id_vecs)

    def _layer_index(self, name: str) -> int:
        index = self._net.layer_names_index.get(name)
        if index is None:
            raise ConfigError(
                f"{self._net.source}: Unknown layer name {name}"
                + suggest(name, self._net.layer_names)
            )
        return index

    def _blob(self, name: str) -> Blob:
        return self._net.blob_by_name(name)

    # -- running ---------------------------------------------------------------------

    def _forward(self, start: int, end: int) -> float:
        """Layers start..end (indices, inclusive); their loss (ForwardFromTo)."""
        return self._net.forward_from_to(start, end)

    def _backward(self, start: int, end: int) -> None:
        """Layers start down to end (indices, inclusive) (BackwardFromTo)."""
        self._net.backward_from_to(start, end)

    def _set(self, what: str, names: list[str], values: Mapping[str, Any]) -> None:
        """Copy `values` into the named blobs' data or diff (forward and
        backward keyword arguments): exactly `names`, batch-sized."""
        if set(values) != set(names):
            noun = "Input blob" if what == "data" else "Top diff"
            net_side = "inputs" if what == "data" else "outputs"
            raise ConfigError(
                f"{self._net.source}: {noun} arguments do not match net "
                f"{net_side} (given {sorted(values)}, the net's {net_side} are "
                f"{names})"
            )
        for name, value in values.items():
            blob = self._blob(name)
            value = np.asarray(value)
            if value.shape[:1] != blob.shape[:1]:
                raise ShapeError(
                    f"{self._net.source}: blob '{name}': "
                    f"{'Input' if what == 'data' else 'Diff'} is not batch sized "
                    f"(got {value.shape[:1]} rows, the net takes {blob.shape[:1]})"
                )
            getattr(blob, what)[...] = value

    def forward(
        self,
        blobs: Sequence[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: Any,
    ) -> Arrays:
        """Run layers `start`..`end` (names; default all) after copying the
        keyword arrays into the net's inputs; return {name: data} for the
        outputs (or `end`'s tops) and `blobs`: the blobs' own arrays."""
        extra = list(blobs or [])
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.top_names[end] + extra)
        else:
            end_ind = len(self._net.layers) - 1
            outputs = set(self.outputs + extra)
        if kwargs:
            self._set("data", self.inputs, kwargs)
        self._forward(start_ind, end_ind)
        return {out: self._blob(out).data for out in outputs}

    def backward(
        self,
        diffs: Sequence[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        **kwargs: Any,
    ) -> Arrays:
        """Run layers `start` down to `end` (names; default all) after
        copying the keyword arrays into the outputs' diffs; return {name:
        diff} for the inputs (or `end`'s bottoms) and `diffs`."""
        extra = list(diffs or [])
        start_ind = (
            self._layer_index(start) if start is not None else len(self._net.layers) - 1
        )
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.bottom_names[end] + extra)
        else:
            end_ind = 0
            outputs = set(self.inputs + extra)
        if kwargs:
            self._set("diff", self.outputs, kwargs)
        self._backward(start_ind, end_ind)
        return {out: self._blob(out).diff for out in outputs}

    def _batch(self, arrays: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """`arrays` (all of one length) in the net's batch size (the first
        blob's first dimension); the last batch is padded with zeros."""
        if not arrays:
            return
        values = {name: np.asarray(a) for name, a in arrays.items()}
        num = len(next(iter(values.values())))
        batch_size = self._net.blobs[0].shape[0]
        for i in range(0, num - num % batch_size, batch_size):
            yield {name: a[i : i + batch_size] for name, a in values.items()}
        remainder = num % batch_size
        if remainder:
            yield {
                name: np.concatenate(
                    [a[-remainder:], np.zeros((batch_size - remainder,) + a.shape[1:])]
                )
                for name, a in values.items()
            }

    def _padding(self, arrays: Mapping[str, Any]) -> int:
        """Rows of zeros _batch adds to `arrays`."""
        if not arrays:
            return 0
        num = len(np.asarray(next(iter(arrays.values()))))
        return -num % self._net.blobs[0].shape[0]

    @staticmethod
    def _collect(chunks: dict[str, list[Any]], pad: int) -> Arrays:
        """Batches stacked per name, padding rows dropped; a 0-d blob (a loss)
        gives one value per batch."""
        out: Arrays = {}
        for name, parts in chunks.items():
            if parts and np.ndim(parts[0]) == 0:
                out[name] = np.asarray(parts)
                continue
            stacked = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            out[name] = stacked[: len(stacked) - pad] if pad else stacked
        return out

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs: Any) -> Arrays:
        """forward() over inputs of any length, batch by batch: {name:
        every row's output} (copies), the last batch's padding dropped."""
        if not kwargs:
            raise ConfigError(
                f"{self._net.source}: forward_all takes the input arrays "
                f"({', '.join(self.inputs) or 'this net has no inputs'}=...)"
            )
        chunks: dict[str, list[Any]] = {
            o: [] for o in set(self.outputs) | set(blobs or [])
        }
        for batch in self._batch(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                chunks[name].append(value.copy())
        return self._collect(chunks, self._padding(kwargs))

    def forward_backward_all(
        self,
        blobs: Sequence[str] | None = None,
        diffs: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[Arrays, Arrays]:
        """forward() and backward() batch by batch: input arrays go forward,
        output diff arrays (named after the outputs) backward; returns
        ({name: data}, {name: diff}) over all rows."""
        outs: dict[str, list[Any]] = {
            o: [] for o in set(self.outputs) | set(blobs or [])
        }
        grads: dict[str, list[Any]] = {
            d: [] for d in set(self.inputs) | set(diffs or [])
        }
        forward_in = {k: kwargs[k] for k in self.inputs if k in kwargs}
        backward_in = {k: kwargs[k] for k in self.outputs if k in kwargs}
        for fb, bb in zip_longest(
            self._batch(forward_in), self._batch(backward_in), fillvalue={}
        ):
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].append(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].append(value.copy())
        pad = max(self._padding(forward_in), self._padding(backward_in))
        return self._collect(outs, pad), self._collect(grads, pad)

    # -- the rest of _caffe.cpp's Net ----------------------------------------------

    def reshape(self) -> None:
        """Reshape every layer to its bottoms (after an input blob's reshape)."""
        self._net.reshape()

    def clear_param_diffs(self) -> None:
        self._net.clear_param_diffs()

    def copy_from(self, filename: PathLike) -> None:
        """Weights by layer name from a .caffemodel or .caffemodel.h5."""
        weights.load_weights(self._net, filename)

    def share_with(self, other: Net) -> None:
        """Use `other`'s weights (shared arrays) for the layers of the same name."""
        self._net.share_trained_layers_with(other._net)

    def save(self, filename: PathLike) -> None:
        """The weights as a binary .caffemodel (Net::ToProto, no diffs)."""
        write_binaryproto(filename, self._net.to_proto(write_diff=False))

    def save_hdf5(self, filename: PathLike) -> None:
        self._net.to_hdf5(filename)

    def load_hdf5(self, filename: PathLike) -> None:
        weights.copy_trained_layers_from_hdf5(self._net, filename)

    def set_input_arrays(self, data: Any, labels: Any) -> None:
        """Hand `data` (N, C, H, W) and `labels` (N,) float32 arrays to the
        MemoryData layer that must be the net's first; it keeps them (no
        copy) and serves batch_size rows per forward."""
        layers = self._net.layers
        if not layers or layers[0].type != "MemoryData":
            first = f"'{layers[0].name}' ({layers[0].type})" if layers else "none"
            raise ConfigError(
                f"{self._net.source}: set_input_arrays may only be called if the "
                f"first layer is a MemoryDataLayer (the first layer is {first})"
            )
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        layers[0].set_input_arrays(data, labels)  # type: ignore[attr-defined]

    _set_input_arrays = set_input_arrays

    def after_backward(self, callback: Callable[[int], None]) -> None:
        """callback(layer index) after each layer's backward."""
        self._net.add_after_backward(callback)

    def _no_hook(self, callback: Callable[[int], None]) -> None:
        raise NotImplementedError(
            "caffesolve nets have after_backward hooks only (no before_forward, "
            "after_forward or before_backward)"
        )

    before_forward = after_forward = before_backward = _no_hook
