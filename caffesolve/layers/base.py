"""Layer: Caffe's layer life cycle, setup -> reshape -> forward / backward.

Mirrors caffe/layer.hpp: `setup` checks the bottom/top counts, calls
`layer_setup` (one-time work: read the layer's parameter message, create the
learnable `blobs`), then `reshape` (size the tops from the bottoms), then records
the loss weight of each top. The Net calls `reshape` then `forward` on every
pass, and `backward` with one propagate_down flag per bottom.

Layer math allocates with `self.xp`, the array module of the net's backend
(caffesolve.backend), and keeps the dtype of its bottoms: float32 in nets,
float64 in gradient-check tests.
Param diffs accumulate (+=) over backward calls; bottom diffs are overwritten.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.proto import caffe_pb2


class Layer:
    """Base of every layer; subclasses set `type` and override the hooks."""

    type: ClassVar[str] = ""
    # Blob-count rules (Caffe's ExactNumBottomBlobs etc.); -1 means no rule.
    exact_num_bottom_blobs: ClassVar[int] = -1
    min_bottom_blobs: ClassVar[int] = -1
    max_bottom_blobs: ClassVar[int] = -1
    exact_num_top_blobs: ClassVar[int] = -1
    min_top_blobs: ClassVar[int] = -1
    max_top_blobs: ClassVar[int] = -1
    equal_num_bottom_top_blobs: ClassVar[bool] = False
    # Caffe's AutoTopBlobs: the net creates the minimum number of tops.
    auto_top_blobs: ClassVar[bool] = False
    # Loss layers weigh their first top by 1 unless loss_weight says otherwise.
    is_loss: ClassVar[bool] = False
    # False for layers whose top must not be their bottom (Split, Flatten...).
    allow_in_place: ClassVar[bool] = True
    # True for layers that run the user's code (Python): their exceptions
    # reach the caller unchanged instead of becoming a layer error.
    runs_user_code: ClassVar[bool] = False
    # The array module of the layer's blobs and buffers (caffesolve.backend).
    xp: Any = np

    def __init__(
        self,
        param: caffe_pb2.LayerParameter,
        phase: int = caffe_pb2.TRAIN,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.layer_param = param
        self.phase = phase
        self.rng = rng if rng is not None else np.random.default_rng()
        self.blobs: list[Blob] = []
        self.param_propagate_down: list[bool] = []
        self.loss: list[float] = []
        self.configure()

    def configure(self) -> None:
        """Construction-time work that reads `layer_param`, before any setup
        (Caffe's layer constructors): e.g. blob-count rules that depend on a
        parameter. Nothing by default."""

    # -- identity and errors -------------------------------------------------

    @property
    def name(self) -> str:
        return self.layer_param.name

    def where(self) -> str:
        """ "layer 'ip1' (InnerProduct)": the prefix of this layer's errors."""
        return f"layer '{self.name}' ({self.layer_param.type})"

    def config_error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where()}: {message}")

    def axis_index(self, blob: Blob, field: str) -> int:
        """Caffe's CanonicalAxisIndex of the layer's parameter field `field`
        ("softmax_param.axis") for `blob`; out of range, an error naming the
        layer and the field."""
        message, name = field.split(".")
        axis = getattr(getattr(self.layer_param, message), name)
        try:
            return blob.canonical_axis_index(axis)
        except ShapeError as e:
            raise self.config_error(f"{field}: {e}") from None

    def shape_error(self, message: str) -> ShapeError:
        """A ShapeError naming this layer (a bottom that does not fit)."""
        return ShapeError(f"{self.where()}: {message}")

    # -- learnable blobs and buffers ------------------------------------------------

    def fill(self, blob: Blob, filler: caffe_pb2.FillerParameter, field: str) -> None:
        """Fill a new learnable blob from `filler` with the layer's rng; a
        filler error names the layer and the field (`field`)."""
        from caffesolve.fillers import fill

        try:
            fill(blob, filler, self.rng)
        except ConfigError as e:
            raise self.config_error(f"{field}: {e}") from None

    def buffer(
        self, name: str, shape: tuple[int, ...], dtype: Any, fill: float = 0.0
    ) -> Any:
        """A work array kept across iterations under `name`, made anew (filled
        with `fill`: the zero borders of padded images stay zero) only when its
        shape or dtype changes. `forget_buffers()` drops them all."""
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self.xp.full(shape, fill, dtype)
            buffers[name] = buf
        return buf

    def forget_buffers(self) -> None:
        """Drop every buffer made by `buffer` (their shapes are out of date)."""
        self.__dict__["_buffers"] = {}

    # -- life cycle --------------------------------------------------------------

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Caffe's Layer::SetUp."""
        self.check_blob_counts(bottom, top)
        if not self.allow_in_place and any(t is b for t in top for b in bottom):
            raise self.config_error(
                f"{self.layer_param.type} Layer does not allow in-place computation."
            )
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)
        self.set_loss_weights(top)
        if len(self.param_propagate_down) != len(self.blobs):
            self.param_propagate_down = [True] * len(self.blobs)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """One-time setup: read parameters, create `self.blobs`."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError

    def backward(
        self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]
    ) -> None:
        """Write bottom diffs (where propagate_down) and add to param diffs."""

    def blob_roles(self) -> list[str]:
        """What each of `blobs` holds ("mean", "variance", ...), for the
        message when a weights file has the wrong number; [] if not named."""
        return []

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Caffe's AllowForceBackward: False for inputs like labels."""
        return True

    # -- state for bit-exact resume (data cursors, RNG) ----------------------------

    def get_state(self) -> dict[str, Any] | None:
        """JSON-able state beyond the weights (a data cursor), or None."""
        return None

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what get_state returned."""

    # -- data-parallel training (caffesolve.parallel) --------------------------------

    def shard(self, solver_rank: int, solver_count: int) -> None:
        """Read only this rank's share of the records: every solver_count-th
        one, starting at solver_rank, of the sequence one process would read
        (Caffe's DataLayer::Skip). Layers that read records override it, and
        keep get_state() the same on every rank; the others ignore it."""

    # -- helpers -------------------------------------------------------------------

    def set_loss_weights(self, top: list[Blob]) -> None:
        """Caffe's SetLossWeights; a loss layer's first top defaults to 1."""
        weights = list(self.layer_param.loss_weight)
        if not weights and self.is_loss:
            weights = [1.0] + [0.0] * (len(top) - 1)
        if weights and len(weights) != len(top):
            raise self.config_error(
                f"loss_weight must be unspecified or given once per top "
                f"({len(top)} tops, {len(weights)} loss_weight values)"
            )
        self.loss = [float(np.float32(w)) for w in weights] or [0.0] * len(top)

    def check_blob_counts(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Caffe's CheckBlobCounts, with Caffe's messages."""
        t = self.layer_param.type
        nb, nt = len(bottom), len(top)
        bottoms = "bottom blob(s) as input."
        tops = "top blob(s) as output."
        rules = [
            (self.exact_num_bottom_blobs, nb, "takes", "", bottoms),
            (self.min_bottom_blobs, nb, "takes", "at least ", bottoms),
            (self.max_bottom_blobs, nb, "takes", "at most ", bottoms),
            (self.exact_num_top_blobs, nt, "produces", "", tops),
            (self.min_top_blobs, nt, "produces", "at least ", tops),
            (self.max_top_blobs, nt, "produces", "at most ", tops),
        ]
        for rule, n, verb, bound, what in rules:
            ok = {"": n == rule, "at least ": n >= rule, "at most ": n <= rule}
            if rule >= 0 and not ok[bound]:
                raise self.config_error(f"{t} Layer {verb} {bound}{rule} {what}")
        if self.equal_num_bottom_top_blobs and nb != nt:
            raise self.config_error(
                f"{t} Layer produces one top blob as output for each bottom blob input."
            )
