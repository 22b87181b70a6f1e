"""Net: the network a NetParameter describes, wired and run as Caffe's net.cpp.

Building a net (Caffe's Net::Init):

1. upgrade old formats (V0/V1 `layers`, net-level `input` fields);
2. keep the layers whose include/exclude rules the NetState meets (FilterNet);
3. insert a Split layer wherever a top feeds several bottoms (InsertSplits),
   so each consumer writes its own diff and the Split sums them;
4. create each layer from the registry, wire its bottoms and tops by blob name
   (in-place when a top repeats the bottom at the same index), set it up,
   record loss weights, ParamSpecs (lr_mult, decay_mult, shared names);
5. work out, from the loss backwards, which layers and bottoms need backward;
6. tops nobody consumes are the net's outputs; shared params become one blob.

Running it: `forward` reshapes and runs every layer and returns the loss
sum(loss_weight * top.data) over weighted tops; `backward` runs the layers
that need it in reverse; param diffs accumulate until `clear_param_diffs`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, NoReturn

import numpy as np
from google.protobuf import text_format

from caffesolve import weights
from caffesolve.backend import CPU, Backend
from caffesolve.blob import Blob
from caffesolve.errors import (
    CaffesolveError,
    ConfigError,
    RunError,
    ShapeError,
    describe,
    one_line,
)
from caffesolve.layers import Layer, create_layer
from caffesolve.log import LOG, fmt32
from caffesolve.net_param import filter_net, insert_splits
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import suggest
from caffesolve.proto.upgrade import (
    net_needs_upgrade,
    read_net_params_from_text_file,
    upgrade_net_as_needed,
)


def _loss_weight(layer: Layer, top_id: int) -> float:
    """Layer::loss(top_id): the top's loss weight, 0 if the layer set none."""
    return layer.loss[top_id] if top_id < len(layer.loss) else 0.0


def batch_size_fields(lp: caffe_pb2.LayerParameter) -> list[str]:
    """The `x_param.batch_size` fields set in a layer (Data, HDF5Data, ...),
    and an Input layer's first dim: where a net's memory is set."""
    fields = [
        f"{field.name}.batch_size"
        for field, value in lp.ListFields()
        if field.message_type is not None
        and not field.is_repeated
        and "batch_size" in value.DESCRIPTOR.fields_by_name
        and value.batch_size
    ]
    if lp.type == "Input" and any(s.dim for s in lp.input_param.shape):
        fields.append("input_param.shape dim 0")
    return fields


def _abs_mean(values: np.ndarray) -> float:
    """Blob::asum_data() / count(), the number debug_info prints."""
    return float(np.abs(values).sum(dtype=np.float32) / max(values.size, 1))


# -- the Net -----------------------------------------------------------------


class Net:
    """A network of layers built from a NetParameter (Caffe's Net<float>)."""

    def __init__(
        self,
        param: caffe_pb2.NetParameter,
        phase: int | None = None,
        *,
        stages: Iterable[str] = (),
        level: int | None = None,
        rng: np.random.Generator | None = None,
        source: str = "<net>",
        quiet: bool = False,
        backend: Backend = CPU,
    ) -> None:
        """Build the net for `phase` (default: param.state.phase).

        `stages` are added to param.state.stage and `level`, if given,
        replaces param.state.level, as Caffe's Net(file, phase, level, stages).
        `rng` is handed to every layer (fillers, Dropout): the same seed gives
        the same initial weights. `source` (the prototxt's path) starts every
        error message; `quiet` silences the construction log.
        """
        self.source = source
        self.quiet = quiet
        self.backend = backend
        self.rng = rng if rng is not None else np.random.default_rng()
        in_param = caffe_pb2.NetParameter()
        in_param.CopyFrom(param)
        if net_needs_upgrade(in_param):
            upgrade_net_as_needed(in_param, source)
        if phase is not None:
            in_param.state.phase = phase
        in_param.state.stage.extend(stages)
        if level is not None:
            in_param.state.level = level
        self.phase: int = in_param.state.phase
        self.state = in_param.state
        filtered = filter_net(in_param, source, log=not quiet)
        if not quiet:
            self.log_info(
                53,
                "Initializing net from parameters: \n"
                + text_format.MessageToString(filtered),
            )
        net_param = insert_splits(filtered, source)
        self.name: str = net_param.name
        self.force_backward: bool = net_param.force_backward
        self.debug_info: bool = net_param.debug_info

        self.layers: list[Layer] = []
        self.layer_names: list[str] = []
        self.bottom_vecs: list[list[Blob]] = []
        self.top_vecs: list[list[Blob]] = []
        self.bottom_id_vecs: list[list[int]] = []
        self.top_id_vecs: list[list[int]] = []
        self.param_id_vecs: list[list[int]] = []
        self.bottom_need_backward: list[list[bool]] = []
        self.layer_need_backward: list[bool] = []
        self.blobs: list[Blob] = []
        self.blob_names: list[str] = []
        self.blob_need_backward: list[bool] = []
        self.blob_loss_weights: list[float] = []
        self.input_blob_indices: list[int] = []
        self.input_blobs: list[Blob] = []
        # Params: every layer's blobs in order (params_), who owns each
        # (param_owners_: -1 or the owner's index in params), and the unique
        # learnable ones with their multipliers.
        self.params: list[Blob] = []
        self.param_owners: list[int] = []
        self.param_layer_indices: list[tuple[int, int]] = []
        self.param_display_names: list[str] = []
        self.param_names_index: dict[str, int] = {}
        self.learnable_params: list[Blob] = []
        self.learnable_param_ids: list[int] = []
        self.params_lr: list[float] = []
        self.params_weight_decay: list[float] = []
        self.has_params_lr: list[bool] = []
        self.has_params_decay: list[bool] = []
        self.memory_used = 0
        self.after_backward: list[Callable[[int], None]] = []

        self._blob_name_to_idx: dict[str, int] = {}
        self._available: set[str] = set()
        for layer_id, lp in enumerate(net_param.layer):
            try:
                self._init_layer(layer_id, lp)
            except MemoryError as e:
                raise self._error(self._memory_error(e), lp) from e
        if not net_param.layer and not quiet:
            LOG.warning(
                "net.cpp:68",
                f"{source}: the {caffe_pb2.Phase.Name(self.phase)} net "
                f"'{self.name}' has no layers (check the include/exclude rules)",
            )
        self._mark_backward()
        if self.force_backward:
            self._force_backward()

        # Whatever nobody consumed is an output (Caffe iterates a std::set).
        self.output_blob_indices: list[int] = []
        for blob_name in sorted(self._available):
            self.log_info(244, f"This network produces output {blob_name}")
            self.output_blob_indices.append(self._blob_name_to_idx[blob_name])
        self.output_blobs: list[Blob] = [
            self.blobs[i] for i in self.output_blob_indices
        ]
        self.output_blob_names: list[str] = [
            self.blob_names[i] for i in self.output_blob_indices
        ]
        self.output_loss_weights: list[float] = [
            self.blob_loss_weights[i] for i in self.output_blob_indices
        ]
        self.blob_names_index: dict[str, int] = {
            n: i for i, n in enumerate(self.blob_names)
        }
        self.layer_names_index: dict[str, int] = {
            n: i for i, n in enumerate(self.layer_names)
        }
        self.share_weights()
        # Per layer, the tops carrying a loss weight: (blob, weight).
        self._loss_tops: list[list[tuple[Blob, float]]] = [
            [(t, w) for t, w in zip(tops, layer.loss) if w]
            for tops, layer in zip(self.top_vecs, self.layers)
        ]
        # (layer, bottoms, tops, weighted tops): forward_from_to's loop.
        self._forward_plan = list(
            zip(self.layers, self.bottom_vecs, self.top_vecs, self._loss_tops)
        )
        self.log_info(257, "Network initialization done.")

    @classmethod
    def from_prototxt(
        cls,
        path: str | os.PathLike[str],
        phase: int | None = None,
        **kwargs: Any,
    ) -> Net:
        """The net a prototxt file describes (Caffe's Net(param_file, phase, ...)).

        The file is upgraded as needed; errors start with its path.
        """
        param = read_net_params_from_text_file(path)
        kwargs.setdefault("source", str(path))
        return cls(param, phase, **kwargs)

    # -- construction ---------------------------------------------------------

    def log_info(self, line: int, message: str) -> None:
        """A net.cpp log line, unless the net was built quiet."""
        if not self.quiet:
            LOG.info(f"net.cpp:{line}", message)

    def _error(self, e: Exception, lp: caffe_pb2.LayerParameter) -> CaffesolveError:
        """`e` as a user error starting '{source}: layer 'x' (Type): '."""
        message = str(e)
        if not message.startswith(f"layer '{lp.name}'"):
            message = f"layer '{lp.name}' ({lp.type}): {message}"
        if not message.startswith(self.source + ":"):
            message = f"{self.source}: {message}"
        cls = type(e) if isinstance(e, CaffesolveError) else ShapeError
        return cls(one_line(message))

    def _memory_error(self, e: MemoryError) -> RunError:
        """Out of memory: what was asked, what the blobs hold, what to lower."""
        held = self.memory_used * 4 * 2 / 2**30  # float32 data and diff
        sizes = [
            f"{field} in layer '{lp.name}'"
            for lp in (layer.layer_param for layer in self.layers)
            for field in batch_size_fields(lp)
        ]
        lower = f"lower {' or '.join(sizes)}" if sizes else "use smaller blobs"
        return RunError(
            f"{describe(e)}; the blobs made so far hold {held:.3g} GiB; {lower}"
        )

    def raise_layer_failure(self, i: int, e: Exception) -> NoReturn:
        """Raise the exception `e` of layer i's forward or backward as one
        line naming the net's file and the layer: our own errors keep their
        class, a memory error says what to lower, anything else becomes a
        RunError whose cause is the original. A layer that runs user code
        (Python) passes the user's own exceptions on unchanged."""
        layer = self.layers[i]
        if layer.runs_user_code and not isinstance(e, CaffesolveError):
            raise e
        lp = layer.layer_param
        if isinstance(e, CaffesolveError):
            raise self._error(e, lp) from e
        if isinstance(e, MemoryError):
            raise self._error(self._memory_error(e), lp) from e
        raise self._error(RunError(describe(e)), lp) from e

    def _init_layer(self, layer_id: int, lp: caffe_pb2.LayerParameter) -> None:
        """One iteration of Caffe's Net::Init loop: create, wire, set up."""
        if not lp.HasField("phase"):
            lp.phase = self.phase
        if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
            raise self._error(
                ConfigError(
                    "propagate_down param must be specified either 0 or "
                    f"bottom_size times ({len(lp.bottom)} bottoms, "
                    f"{len(lp.propagate_down)} propagate_down values)"
                ),
                lp,
            )
        try:
            layer = create_layer(lp, lp.phase, self.rng, self.backend.xp)
        except CaffesolveError as e:
            raise self._error(e, lp) from e
        if len(lp.blobs) and not layer.blobs:
            # Caffe's Layer constructor: blobs in the definition are the
            # layer's params (layers skip their fillers when blobs exist).
            # (Filled in place: a Python layer's list is also its own.)
            layer.blobs.extend(Blob(xp=self.backend.xp) for _ in lp.blobs)
            for blob, proto in zip(layer.blobs, lp.blobs):
                blob.from_proto(proto)
        self.layers.append(layer)
        self.layer_names.append(lp.name)
        self.log_info(86, f"Creating Layer {lp.name}")
        for vec in (
            self.bottom_vecs,
            self.top_vecs,
            self.bottom_id_vecs,
            self.top_id_vecs,
            self.param_id_vecs,
            self.bottom_need_backward,
        ):
            vec.append([])

        need_backward = False
        for bottom_id in range(len(lp.bottom)):
            blob_id = self._append_bottom(layer_id, lp, bottom_id)
            need_backward |= self.blob_need_backward[blob_id]
        num_top = len(lp.top)
        for top_id in range(num_top):
            self._append_top(layer_id, lp, top_id, named=True)
            if lp.type == "Input":
                self.input_blob_indices.append(len(self.blobs) - 1)
                self.input_blobs.append(self.blobs[-1])
        if layer.auto_top_blobs:
            needed = max(layer.min_top_blobs, layer.exact_num_top_blobs)
            for top_id in range(num_top, needed):
                self._append_top(layer_id, lp, top_id, named=False)

        try:
            layer.setup(self.bottom_vecs[layer_id], self.top_vecs[layer_id])
        except (CaffesolveError, ValueError) as e:
            if layer.runs_user_code and not isinstance(e, CaffesolveError):
                raise  # the user's own exception, unchanged (as pycaffe)
            raise self._error(e, lp) from e
        self.log_info(124, f"Setting up {lp.name}")
        for top_id, top in enumerate(self.top_vecs[layer_id]):
            blob_id = self.top_id_vecs[layer_id][top_id]
            if len(self.blob_loss_weights) <= blob_id:
                self.blob_loss_weights.extend(
                    [0.0] * (blob_id + 1 - len(self.blob_loss_weights))
                )
            weight = _loss_weight(layer, top_id)
            self.blob_loss_weights[blob_id] = weight
            self.log_info(131, f"Top shape: {top.shape_string()}")
            if weight:
                self.log_info(134, f"    with loss weight {fmt32(weight)}")
                top.diff[...] = weight  # Caffe's SetLossWeights
            self.memory_used += top.count
        self.log_info(
            139,
            f"Memory required for data: {self.memory_used * 4}",  # float32
        )

        num_param_blobs = len(layer.blobs)
        if len(lp.param) > num_param_blobs:
            raise self._error(
                ConfigError(
                    f"Too many params specified for layer {lp.name} "
                    f"({len(lp.param)} param specs, {num_param_blobs} blobs)"
                ),
                lp,
            )
        default_spec = caffe_pb2.ParamSpec()
        layer.param_propagate_down = [True] * num_param_blobs
        for param_id in range(num_param_blobs):
            spec = lp.param[param_id] if param_id < len(lp.param) else default_spec
            param_need_backward = spec.lr_mult != 0
            need_backward |= param_need_backward
            layer.param_propagate_down[param_id] = param_need_backward
        for param_id in range(num_param_blobs):
            self._append_param(layer_id, lp, param_id)
        self.layer_need_backward.append(need_backward)
        if need_backward:
            for blob_id in self.top_id_vecs[layer_id]:
                self.blob_need_backward[blob_id] = True

    def _append_top(
        self, layer_id: int, lp: caffe_pb2.LayerParameter, top_id: int, named: bool
    ) -> None:
        """Caffe's Net::AppendTop: in-place, duplicate check, or a new blob.

        Tops a layer adds for itself (AutoTopBlobs) are anonymous: no other
        layer can use them and they are not net outputs.
        """
        blob_name = lp.top[top_id] if top_id < len(lp.top) else "(automatic)"
        if named and top_id < len(lp.bottom) and blob_name == lp.bottom[top_id]:
            self.log_info(369, f"{lp.name} -> {blob_name} (in-place)")
            blob_id = self._blob_name_to_idx[blob_name]
            self.top_vecs[layer_id].append(self.blobs[blob_id])
            self.top_id_vecs[layer_id].append(blob_id)
        elif named and blob_name in self._blob_name_to_idx:
            raise self._error(
                ConfigError(
                    f"Top blob '{blob_name}' produced by multiple sources. "
                    "(Give it another name, or make the layer in-place by "
                    "putting the same blob at the same bottom index.)"
                ),
                lp,
            )
        else:
            self.log_info(382, f"{lp.name} -> {blob_name}")
            blob = Blob(name=blob_name, xp=self.backend.xp)
            blob_id = len(self.blobs)
            self.blobs.append(blob)
            self.blob_names.append(blob_name)
            self.blob_need_backward.append(False)
            if named:
                self._blob_name_to_idx[blob_name] = blob_id
            self.top_id_vecs[layer_id].append(blob_id)
            self.top_vecs[layer_id].append(blob)
        if named:
            self._available.add(blob_name)

    def _append_bottom(
        self, layer_id: int, lp: caffe_pb2.LayerParameter, bottom_id: int
    ) -> int:
        """Caffe's Net::AppendBottom: find the blob, consume it, need_backward."""
        blob_name = lp.bottom[bottom_id]
        if blob_name not in self._available:
            raise ConfigError(
                f"{self.source}: Unknown bottom blob '{blob_name}' (layer "
                f"'{lp.name}', bottom index {bottom_id})"
                + suggest(blob_name, sorted(self._available))
            )
        blob_id = self._blob_name_to_idx[blob_name]
        self.log_info(408, f"{lp.name} <- {blob_name}")
        self.bottom_vecs[layer_id].append(self.blobs[blob_id])
        self.bottom_id_vecs[layer_id].append(blob_id)
        self._available.discard(blob_name)
        need_backward = self.blob_need_backward[blob_id]
        if len(lp.propagate_down):
            need_backward = lp.propagate_down[bottom_id]
        self.bottom_need_backward[layer_id].append(need_backward)
        return blob_id

    def _append_param(
        self, layer_id: int, lp: caffe_pb2.LayerParameter, param_id: int
    ) -> None:
        """Caffe's Net::AppendParam: own a param blob, or share a named one.

        A param named for the first time (or unnamed) is learnable, with its
        ParamSpec's lr_mult/decay_mult. A name seen before shares the first
        owner's blob (shapes equal, or counts equal with PERMISSIVE); an
        lr_mult/decay_mult set on both must agree, one set on the sharer only
        becomes the owner's.
        """
        # The layer's own LayerParameter, as Caffe's AppendParam reads it: a
        # layer may add ParamSpecs in setup (BatchNorm's lr_mult 0).
        layer = self.layers[layer_id]
        specs = layer.layer_param.param
        spec = specs[param_id] if param_id < len(specs) else None
        param_name = spec.name if spec is not None else ""
        self.param_display_names.append(param_name or str(param_id))
        net_param_id = len(self.params)
        self.params.append(layer.blobs[param_id])
        self.param_id_vecs[layer_id].append(net_param_id)
        self.param_layer_indices.append((layer_id, param_id))
        if spec is None:
            spec = caffe_pb2.ParamSpec()
        if not param_name or param_name not in self.param_names_index:
            self.param_owners.append(-1)
            if param_name:
                self.param_names_index[param_name] = net_param_id
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(self.params[net_param_id])
            self.has_params_lr.append(spec.HasField("lr_mult"))
            self.has_params_decay.append(spec.HasField("decay_mult"))
            self.params_lr.append(float(spec.lr_mult))
            self.params_weight_decay.append(float(spec.decay_mult))
            return
        owner_net_param_id = self.param_names_index[param_name]
        self.param_owners.append(owner_net_param_id)
        owner_layer_id, owner_param_id = self.param_layer_indices[owner_net_param_id]
        owner_name = self.layer_names[owner_layer_id]
        self.log_info(
            467,
            f"Sharing parameters '{param_name}' owned by layer '{owner_name}', "
            f"param index {owner_param_id}",
        )
        this_blob = layer.blobs[param_id]
        owner_blob = self.layers[owner_layer_id].blobs[owner_param_id]
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if this_blob.count != owner_blob.count:
                raise self._error(
                    ShapeError(
                        f"Cannot share param '{param_name}' owned by layer "
                        f"'{owner_name}' with layer '{lp.name}'; count mismatch.  "
                        f"Owner layer param shape is {owner_blob.shape_string()}; "
                        f"sharing layer shape is {this_blob.shape_string()}"
                    ),
                    lp,
                )
        elif this_blob.shape != owner_blob.shape:
            raise self._error(
                ShapeError(
                    f"Cannot share param '{param_name}' owned by layer "
                    f"'{owner_name}' with layer '{lp.name}'; shape mismatch.  "
                    f"Owner layer param shape is {owner_blob.shape_string()}; "
                    f"sharing layer expects shape {this_blob.shape_string()} "
                    "(give the params different names, or set share_mode: "
                    "PERMISSIVE if only the counts must agree)"
                ),
                lp,
            )
        learnable_id = self.learnable_param_ids[owner_net_param_id]
        self.learnable_param_ids.append(learnable_id)
        for field, has, values, what in (
            ("lr_mult", self.has_params_lr, self.params_lr, "lr_mult"),
            ("decay_mult", self.has_params_decay, self.params_weight_decay,
             "decay_mult"),
        ):  # fmt: skip
            if not spec.HasField(field):
                continue
            value = float(getattr(spec, field))
            if has[learnable_id]:
                if value != values[learnable_id]:
                    raise self._error(
                        ConfigError(
                            f"Shared param '{param_name}' has mismatched {what} "
                            f"({fmt32(value)} here, {fmt32(values[learnable_id])} "
                            f"for the owner layer '{owner_name}')"
                        ),
                        lp,
                    )
            else:
                has[learnable_id] = True
                values[learnable_id] = value

    def _mark_backward(self) -> None:
        """Caffe's backward pass over the layers after Init's main loop.

        A layer contributes to the loss if one of its tops has a loss weight
        or feeds a layer that does; one that doesn't needs no backward, and
        neither do its bottoms. A layer none of whose tops needs a diff (all
        consumers skip propagating into them) skips backward too.
        """
        under_loss: set[str] = set()
        skip_backprop: set[str] = set()
        for layer_id in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[layer_id]
            contributes = False
            skip_propagate_down = True
            for top_id, blob_id in enumerate(self.top_id_vecs[layer_id]):
                blob_name = self.blob_names[blob_id]
                if _loss_weight(layer, top_id) or blob_name in under_loss:
                    contributes = True
                if blob_name not in skip_backprop:
                    skip_propagate_down = False
                if contributes and not skip_propagate_down:
                    break
            if self.layer_need_backward[layer_id] and skip_propagate_down:
                self.layer_need_backward[layer_id] = False
                bnb = self.bottom_need_backward[layer_id]
                bnb[:] = [False] * len(bnb)
            if not contributes:
                self.layer_need_backward[layer_id] = False
            name = self.layer_names[layer_id]
            if self.layer_need_backward[layer_id]:
                self.log_info(200, f"{name} needs backward computation.")
            else:
                self.log_info(202, f"{name} does not need backward computation.")
            for bottom_id, blob_id in enumerate(self.bottom_id_vecs[layer_id]):
                blob_name = self.blob_names[blob_id]
                if contributes:
                    under_loss.add(blob_name)
                else:
                    self.bottom_need_backward[layer_id][bottom_id] = False
                if not self.bottom_need_backward[layer_id][bottom_id]:
                    skip_backprop.add(blob_name)

    def _force_backward(self) -> None:
        """force_backward: every layer runs backward, into every bottom that
        allows it (AllowForceBackward), with every param diff computed."""
        for layer_id, layer in enumerate(self.layers):
            self.layer_need_backward[layer_id] = True
            bnb = self.bottom_need_backward[layer_id]
            for bottom_id, blob_id in enumerate(self.bottom_id_vecs[layer_id]):
                bnb[bottom_id] = bnb[bottom_id] or layer.allow_force_backward(bottom_id)
                self.blob_need_backward[blob_id] = (
                    self.blob_need_backward[blob_id] or bnb[bottom_id]
                )
            layer.param_propagate_down = [True] * len(layer.blobs)

    def share_weights(self) -> None:
        """Caffe's ShareWeights: each sharing param uses its owner's arrays.

        Equal shapes: the sharing layer's blob *becomes* the owner's Blob (its
        old Blob object also points at the owner's arrays). PERMISSIVE with a
        different shape: the sharer keeps its shape over views of the owner's
        data and diff, so diffs still accumulate in one place.
        """
        for i, owner in enumerate(self.param_owners):
            if owner < 0:
                continue
            layer_id, param_id = self.param_layer_indices[i]
            this_blob = self.params[i]
            owner_blob = self.params[owner]
            if this_blob.shape == owner_blob.shape:
                this_blob.share_data(owner_blob)
                this_blob.share_diff(owner_blob)
                self.layers[layer_id].blobs[param_id] = owner_blob
                self.params[i] = owner_blob
            else:
                this_blob.data = owner_blob.data.reshape(this_blob.shape)
                this_blob.diff = owner_blob.diff.reshape(this_blob.shape)

    # -- lookup ---------------------------------------------------------------

    def has_blob(self, name: str) -> bool:
        return name in self.blob_names_index

    def has_layer(self, name: str) -> bool:
        return name in self.layer_names_index

    def blob_by_name(self, name: str) -> Blob:
        """The blob called `name` (the last one, for in-place chains)."""
        if name not in self.blob_names_index:
            raise ConfigError(
                f"{self.source}: Unknown blob name {name}"
                + suggest(name, self.blob_names)
            )
        return self.blobs[self.blob_names_index[name]]

    def layer_by_name(self, name: str) -> Layer:
        if name not in self.layer_names_index:
            raise ConfigError(
                f"{self.source}: Unknown layer name {name}"
                + suggest(name, self.layer_names)
            )
        return self.layers[self.layer_names_index[name]]

    # -- running --------------------------------------------------------------

    def forward_layer(self, i: int) -> float:
        """Reshape and forward layer i; its loss sum(weight * top.data).

        Caffe's Layer::Forward: the loss is the dot product of each weighted
        top's data with its diff, which holds the weight (SetLossWeights);
        the diff is refilled here in case a reshape or in-place layer changed it.
        """
        bottom, top = self.bottom_vecs[i], self.top_vecs[i]
        layer = self.layers[i]
        try:
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
        except Exception as e:
            self.raise_layer_failure(i, e)
        if self.debug_info:
            self._forward_debug_info(i)
        loss_tops = self._loss_tops[i]
        if not loss_tops:
            return 0.0
        loss = np.float32(0)
        for blob, weight in loss_tops:
            blob.diff[...] = weight
            loss += np.dot(blob.data.reshape(-1), blob.diff.reshape(-1))
        return float(loss)

    def forward_from_to(self, start: int, end: int) -> float:
        """Layers start..end inclusive (Caffe's ForwardFromTo); their loss."""
        if self.debug_info:
            loss = np.float32(0)
            for i in range(start, end + 1):
                loss += np.float32(self.forward_layer(i))
            return float(loss)
        # forward_layer without its per-call lookups: the training hot loop.
        loss = np.float32(0)
        for i, (layer, bottom, top, loss_tops) in enumerate(
            self._forward_plan[start : end + 1], start
        ):
            try:
                layer.reshape(bottom, top)
                layer.forward(bottom, top)
            except Exception as e:
                self.raise_layer_failure(i, e)
            if loss_tops:  # as forward_layer: the layer's loss, then the sum
                layer_loss = np.float32(0)
                for blob, weight in loss_tops:
                    blob.diff[...] = weight
                    layer_loss += np.dot(blob.data.reshape(-1), blob.diff.reshape(-1))
                loss += np.float32(float(layer_loss))
        return float(loss)

    def forward(self) -> float:
        """Every layer's forward; the net's loss."""
        return self.forward_from_to(0, len(self.layers) - 1)

    def backward_layer(self, i: int) -> None:
        """Layer i's backward, if it needs one."""
        if self.layer_need_backward[i]:
            try:
                self.layers[i].backward(
                    self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i]
                )
            except Exception as e:
                self.raise_layer_failure(i, e)

    def backward_from_to(self, start: int, end: int) -> None:
        """Layers start down to end inclusive (Caffe's BackwardFromTo); the
        after_backward callbacks run after each layer, needed or not."""
        for i in range(start, end - 1, -1):
            if self.layer_need_backward[i]:
                try:
                    self.layers[i].backward(
                        self.top_vecs[i],
                        self.bottom_need_backward[i],
                        self.bottom_vecs[i],
                    )
                except Exception as e:
                    self.raise_layer_failure(i, e)
                if self.debug_info:
                    self._backward_debug_info(i)
            for callback in self.after_backward:
                callback(i)

    def add_after_backward(self, callback: Callable[[int], None]) -> None:
        """Caffe's Net::add_after_backward: callback(layer index) after each
        layer's backward (layer-wise gradient reduction hooks in here)."""
        self.after_backward.append(callback)

    def backward(self) -> None:
        """Every layer that needs it, last to first; param diffs accumulate."""
        self.backward_from_to(len(self.layers) - 1, 0)
        if self.debug_info:
            sums = np.zeros(4, np.float32)  # |data|, |diff|, data^2, diff^2
            for blob in self.learnable_params:
                sums += [
                    np.abs(blob.data).sum(),
                    np.abs(blob.diff).sum(),
                    np.square(blob.data).sum(),
                    np.square(blob.diff).sum(),
                ]
            LOG.write(
                "E",
                "net.cpp:721",
                "    [Backward] All net params (data, diff): L1 norm = "
                f"({fmt32(sums[0])}, {fmt32(sums[1])}); L2 norm = "
                f"({fmt32(np.sqrt(sums[2]))}, {fmt32(np.sqrt(sums[3]))})",
            )

    def _forward_debug_info(self, i: int) -> None:
        """debug_info: mean |data| of layer i's tops and params (ForwardDebugInfo)."""
        name = self.layer_names[i]
        for blob, blob_id in zip(self.top_vecs[i], self.top_id_vecs[i]):
            LOG.info(
                "net.cpp:593",
                f"    [Forward] Layer {name}, top blob {self.blob_names[blob_id]} "
                f"data: {fmt32(_abs_mean(blob.data))}",
            )
        for blob, net_param_id in zip(self.layers[i].blobs, self.param_id_vecs[i]):
            LOG.info(
                "net.cpp:605",
                f"    [Forward] Layer {name}, param blob "
                f"{self.param_display_names[net_param_id]} "
                f"data: {fmt32(_abs_mean(blob.data))}",
            )

    def _backward_debug_info(self, i: int) -> None:
        """debug_info: mean |diff| of bottoms and params (BackwardDebugInfo)."""
        name = self.layer_names[i]
        layer = self.layers[i]
        for bottom_id, (blob, blob_id) in enumerate(
            zip(self.bottom_vecs[i], self.bottom_id_vecs[i])
        ):
            if self.bottom_need_backward[i][bottom_id]:
                LOG.info(
                    "net.cpp:621",
                    f"    [Backward] Layer {name}, bottom blob "
                    f"{self.blob_names[blob_id]} diff: {fmt32(_abs_mean(blob.diff))}",
                )
        for param_id, blob in enumerate(layer.blobs):
            if layer.param_propagate_down[param_id]:
                LOG.info(
                    "net.cpp:632",
                    f"    [Backward] Layer {name}, param blob {param_id} "
                    f"diff: {fmt32(_abs_mean(blob.diff))}",
                )

    def forward_backward(self) -> float:
        loss = self.forward()
        self.backward()
        return loss

    def reshape(self) -> None:
        """Reshape every layer to its bottoms (Caffe's Net::Reshape)."""
        for layer, bottom, top in zip(self.layers, self.bottom_vecs, self.top_vecs):
            layer.reshape(bottom, top)

    def clear_param_diffs(self) -> None:
        """Zero every learnable param's diff (Caffe's ClearParamDiffs)."""
        for blob in self.learnable_params:
            blob.diff[...] = 0

    def update(self) -> None:
        """data -= diff on every learnable param (Caffe's Net::Update)."""
        for blob in self.learnable_params:
            blob.data -= blob.diff

    # -- weights in and out ---------------------------------------------------

    def share_trained_layers_with(self, other: Net) -> None:
        """Share `other`'s param data by layer name (weights.share_trained_layers)."""
        weights.share_trained_layers(self, other)

    def copy_trained_layers_from(
        self, param_or_path: caffe_pb2.NetParameter | str | os.PathLike[str]
    ) -> None:
        """Load weights by layer name (weights.copy_trained_layers_from)."""
        weights.copy_trained_layers_from(self, param_or_path)

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        """The net with every layer's blobs (weights.net_to_proto)."""
        return weights.net_to_proto(self, write_diff)

    def to_hdf5(
        self, path: str | os.PathLike[str] | BinaryIO, write_diff: bool = False
    ) -> None:
        """Caffe's HDF5 weights layout (weights.net_to_hdf5)."""
        weights.net_to_hdf5(self, path, write_diff)

    # -- state for resume -----------------------------------------------------

    def data_sources(self) -> dict[str, str]:
        """{layer name: source} for layers that read one (data_param.source,
        hdf5_data_param.source, ...): what a snapshot's data cursors refer to."""
        sources = {}
        for name, layer in zip(self.layer_names, self.layers):
            for field, value in layer.layer_param.ListFields():
                if (
                    field.message_type is not None
                    and not field.is_repeated
                    and "source" in value.DESCRIPTOR.fields_by_name
                    and value.source
                ):
                    sources[name] = value.source
        return sources

    def get_state(self) -> dict[str, Any]:
        """{layer name: layer.get_state()} for layers with state (data cursors)."""
        state: dict[str, Any] = {}
        for name, layer in zip(self.layer_names, self.layers):
            s = layer.get_state()
            if s is not None:
                state[name] = s
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Give each named layer back its get_state() dict."""
        for name, s in state.items():
            if name in self.layer_names_index:
                self.layers[self.layer_names_index[name]].set_state(s)
