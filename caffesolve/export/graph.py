"""The ONNX graph under construction, and what one layer's entry sees of it.

`OnnxGraph` collects nodes, weights (initializers), inputs and outputs with
unique names. `LayerIO` is one layer of the built Net as an exporter entry
sees it: the layer, the ONNX names of its bottoms, the names its tops must
get, and the Net's blobs (their shapes are Caffe's, at the export batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from onnx import NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from caffesolve.blob import Blob
from caffesolve.errors import ExportError, ShapeError
from caffesolve.layers.base import Layer
from caffesolve.proto import caffe_pb2

# The name of the batch axis when it is left open (--batch dynamic).
BATCH = "N"


@dataclass
class LayerIO:
    """One Net layer as its exporter entry sees it."""

    layer: Layer
    bottom: list[str]  # ONNX names of the bottoms
    top: list[str]  # ONNX names the tops must be given
    bottom_blobs: list[Blob]
    top_blobs: list[Blob]
    source: str  # the prototxt, for errors

    @property
    def param(self) -> caffe_pb2.LayerParameter:
        return self.layer.layer_param

    @property
    def name(self) -> str:
        return self.layer.layer_param.name

    def blob(self, i: int) -> npt.NDArray[np.float32]:
        """The layer's i-th param blob (weights), as float32."""
        return np.asarray(self.layer.blobs[i].data, np.float32)

    def shape(self, i: int = 0) -> tuple[int, ...]:
        """Bottom i's shape in the built net."""
        return self.bottom_blobs[i].shape

    def axis(self, axis: int, i: int = 0) -> int:
        """Caffe's CanonicalAxisIndex of `axis` on bottom i."""
        try:
            return self.bottom_blobs[i].canonical_axis_index(axis)
        except ShapeError as e:
            raise self.error(str(e)) from None

    def error(self, why: str) -> ExportError:
        """'net.prototxt: layer 'x' (Type): why' as an ExportError."""
        return ExportError(
            f"{self.source}: layer '{self.name}' ({self.param.type}): {why}"
        )


class OnnxGraph:
    """Nodes, initializers, inputs and outputs of one ONNX graph."""

    def __init__(self, dynamic_batch: bool = False) -> None:
        self.dynamic_batch = dynamic_batch
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[ValueInfoProto] = []
        self.outputs: list[ValueInfoProto] = []
        self.scope = ""  # the layer whose nodes are being added
        self._tensors: set[str] = set()
        self._node_names: set[str] = set()

    # -- names ---------------------------------------------------------------

    @staticmethod
    def _unique(base: str, taken: set[str]) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        """Claim a tensor name chosen elsewhere (a Caffe blob name)."""
        self._tensors.add(name)

    def fresh(self, hint: str) -> str:
        """A new tensor name '{layer}/{hint}' (numbered if taken)."""
        base = f"{self.scope}/{hint}" if self.scope else hint
        return self._unique(base, self._tensors)

    # -- content -------------------------------------------------------------

    def const(self, hint: str, value: Any, dtype: type = np.float32) -> str:
        """An initializer holding `value`; its name."""
        name = self.fresh(hint)
        array = np.array(value, dtype, order="C")  # keeps 0-d scalars 0-d
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, hint: str, values: Sequence[int]) -> str:
        """A 1-D int64 initializer (shapes, axes, sizes)."""
        return self.const(hint, [int(v) for v in values], np.int64)

    def node(
        self, op: str, inputs: Sequence[str], out: str | None = None, **attrs: Any
    ) -> str:
        """Add a one-output node; its output's name (`out`, or a fresh one)."""
        return self.node_n(op, inputs, [out or self.fresh(op.lower())], **attrs)[0]

    def node_n(
        self, op: str, inputs: Sequence[str], outs: Sequence[str], **attrs: Any
    ) -> list[str]:
        """Add a node with several outputs, named `outs`."""
        base = f"{self.scope}/{op}" if self.scope else op
        name = self._unique(base, self._node_names)
        self.nodes.append(helper.make_node(op, list(inputs), list(outs), name, **attrs))
        return list(outs)

    def value_info(self, name: str, shape: Sequence[int]) -> ValueInfoProto:
        """A float tensor's type; axis 0 is BATCH when the batch is dynamic."""
        dims: list[int | str] = [int(d) for d in shape]
        if self.dynamic_batch and dims:
            dims[0] = BATCH
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    def add_input(self, name: str, shape: Sequence[int]) -> None:
        self.inputs.append(self.value_info(name, shape))

    def add_output(self, name: str, shape: Sequence[int]) -> None:
        self.outputs.append(self.value_info(name, shape))

    # -- shared helpers ------------------------------------------------------

    def reshape(
        self,
        x: str,
        from_shape: Sequence[int],
        to_shape: Sequence[int],
        out: str | None = None,
    ) -> str:
        """Reshape x from `from_shape` to `to_shape` (Caffe's shapes).

        With a fixed batch the target is `to_shape` itself. With a dynamic
        batch the leading axes the two shapes share are copied (ONNX's 0) and
        the rest written out; if even axis 0 changes, the batch is taken to be
        folded into the first axis (-1), as in (N, C, H, W) -> (N*C, H*W).
        """
        target = [int(d) for d in to_shape]
        if self.dynamic_batch and target:
            same = 0
            for a, b in zip(from_shape, to_shape):
                if a != b:
                    break
                same += 1
            if same:
                target[:same] = [0] * same
            else:
                target[0] = -1
        return self.node("Reshape", [x, self.ints("shape", target)], out)

    def unsqueeze_trailing(self, x: str, rank: int, trailing: int) -> str:
        """x (of `rank` axes) with `trailing` axes of size 1 appended, so that
        it broadcasts against a bottom from some axis on (Scale, Bias)."""
        if trailing == 0:
            return x
        axes = list(range(rank, rank + trailing))
        return self.node("Unsqueeze", [x, self.ints("axes", axes)])
