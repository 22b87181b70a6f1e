"""Caffe's DataTransformer (data_transformer.cpp), vectorised over a batch.

For each item Caffe computes, with float32 arithmetic,

    top[c, h, w'] = (datum[c, h_off + h, w_off + w] - mean) * scale
    w' = width - 1 - w if the item is mirrored, else w

where `mean` is mean_file's value at the same (uncropped) datum position, or
mean_value[c], or 0. The crop is `crop_size` square: random offsets
h_off, w_off in [0, H - crop_size] in TRAIN, centred ((H - crop_size) // 2) in
TEST. With `mirror`, each item is mirrored with probability 1/2, in TRAIN and
TEST alike (Caffe draws the flip without looking at the phase).

The random draws come from the transformer's own Generator. Caffe draws, per
item, the flip then h_off then w_off; here the whole batch's flips are drawn,
then its h_offs, then its w_offs: the same distribution, a different stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_binaryproto

F32 = np.float32


def load_mean_file(path: str) -> npt.NDArray[np.float32]:
    """A mean BlobProto (.binaryproto) as a (C, H, W) float32 array.

    Caffe's files are 1xCxHxW (legacy num/channels/height/width or shape).
    """
    blob = Blob()
    blob.from_proto(read_binaryproto(path, caffe_pb2.BlobProto()))
    mean = blob.data.astype(F32)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise ShapeError(
            f"{path}: mean_file must hold one 1xCxHxW blob, got shape "
            f"{blob.shape_string()}"
        )
    return mean


def crop_offsets(
    rng: np.random.Generator | None,
    n: int,
    size: tuple[int, int],
    crop_size: int,
    train: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """h_off, w_off per item: random in TRAIN, centred in TEST (Caffe's rule)."""
    height, width = size
    if train:
        assert rng is not None
        h_off = rng.integers(0, height - crop_size + 1, size=n)
        w_off = rng.integers(0, width - crop_size + 1, size=n)
    else:
        h_off = np.full(n, (height - crop_size) // 2, np.int64)
        w_off = np.full(n, (width - crop_size) // 2, np.int64)
    return h_off, w_off


def crop_mirror_index(
    h_off: npt.NDArray[np.int64],
    w_off: npt.NDArray[np.int64],
    mirror: npt.NDArray[np.bool_],
    out_size: tuple[int, int],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Source rows (N, h, 1) and columns (N, 1, w) of each output pixel.

    Output column w' reads source column w_off + w' (or w_off + width-1-w' when
    the item is mirrored), output row h reads h_off + h.
    """
    height, width = out_size
    rows = h_off[:, None] + np.arange(height)
    ramp = np.arange(width)
    cols = w_off[:, None] + np.where(mirror[:, None], width - 1 - ramp, ramp)
    return rows[:, :, None], cols[:, None, :]


def transform_batch(
    data: npt.NDArray[Any],
    rows: npt.NDArray[np.int64] | None,
    cols: npt.NDArray[np.int64] | None,
    mean: npt.NDArray[np.float32] | None,
    scale: float,
) -> npt.NDArray[np.float32]:
    """(data[crop, mirror] - mean[same place]) * scale, in float32.

    `data` is (N, C, H, W) uint8 or float32; `mean` is (C, H, W) (mean_file),
    (C, 1, 1) (mean_value) or None; rows/cols from crop_mirror_index, or None
    for the identity.
    """
    if rows is not None and cols is not None:
        n, c = data.shape[:2]
        item = np.arange(n)[:, None, None, None]
        chan = np.arange(c)[None, :, None, None]
        x = data[item, chan, rows[:, None], cols[:, None]].astype(F32)
        if mean is not None and mean.shape[1:] != (1, 1):
            mean = mean[chan[0], rows[:, None], cols[:, None]]
    else:
        x = data.astype(F32)
    if mean is not None:
        x -= mean
    if F32(scale) != 1:
        x *= F32(scale)
    return x


class DataTransformer:
    """Holds a layer's transform_param, its mean and its Generator."""

    def __init__(
        self,
        param: caffe_pb2.TransformationParameter,
        phase: int,
        rng: np.random.Generator,
        where: str = "DataTransformer",
    ) -> None:
        self.param = param
        self.phase = phase
        self.rng = rng
        self.where = where
        self.mean: npt.NDArray[np.float32] | None = None
        self._warned_force = False
        if param.HasField("mean_file") and len(param.mean_value):
            raise ConfigError(
                f"{where}: Cannot specify mean_file and mean_value at the same time "
                "(transform_param)"
            )
        if param.HasField("mean_file"):
            LOG.info(
                "data_transformer.cpp:25", f"Loading mean file from: {param.mean_file}"
            )
            self.mean = load_mean_file(param.mean_file)
        self.mean_values = np.asarray(param.mean_value, F32)
        if param.force_color and param.force_gray:
            raise ConfigError(
                f"{where}: cannot set both force_color and force_gray (transform_param)"
            )

    @property
    def needs_rand(self) -> bool:
        """Caffe's InitRand test: mirror, or a crop while training."""
        p = self.param
        return bool(p.mirror or (self.phase == caffe_pb2.TRAIN and p.crop_size))

    def infer_blob_shape(self, channels: int, height: int, width: int) -> list[int]:
        """Caffe's InferBlobShape: [1, C, crop or H, crop or W]."""
        crop = self.param.crop_size
        if channels <= 0:
            raise ShapeError(f"{self.where}: datum has {channels} channels")
        if height < crop or width < crop:
            raise ShapeError(
                f"{self.where}: transform_param.crop_size {crop} is larger than "
                f"the {height}x{width} data"
            )
        return [1, channels, crop or height, crop or width]

    def _mean_for(self, c: int, h: int, w: int) -> npt.NDArray[np.float32] | None:
        if self.mean is not None:
            if self.mean.shape != (c, h, w):
                raise ShapeError(
                    f"{self.where}: mean_file {self.param.mean_file} is "
                    f"{'x'.join(map(str, self.mean.shape))}, data is {c}x{h}x{w}"
                )
            return self.mean
        mv = self.mean_values
        if mv.size == 0:
            return None
        if mv.size not in (1, c):
            raise ConfigError(
                f"{self.where}: Specify either 1 mean_value or as many as "
                f"channels: {c} (transform_param.mean_value has {mv.size})"
            )
        return np.broadcast_to(mv, (c,)).reshape(c, 1, 1).astype(F32)

    def transform(self, data: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Transform a (N, C, H, W) batch (uint8 or float32) like Caffe."""
        n, c, h, w = data.shape
        p = self.param
        crop = p.crop_size
        self.infer_blob_shape(c, h, w)
        mean = self._mean_for(c, h, w)
        if p.force_color or p.force_gray:
            if not self._warned_force:
                LOG.warning(
                    "data_transformer.cpp:144",
                    "force_color and force_gray only for encoded datum",
                )
                self._warned_force = True
        mirror = (
            self.rng.integers(0, 2, size=n).astype(bool)
            if p.mirror
            else np.zeros(n, bool)
        )
        if crop or mirror.any():
            size = crop or h, crop or w
            if crop:
                train = self.phase == caffe_pb2.TRAIN
                h_off, w_off = crop_offsets(self.rng, n, (h, w), crop, train)
            else:
                h_off = w_off = np.zeros(n, np.int64)
            rows, cols = crop_mirror_index(h_off, w_off, mirror, size)
            return transform_batch(data, rows, cols, mean, p.scale)
        return transform_batch(data, None, None, mean, p.scale)

    # -- resume ------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """The Generator's state (JSON-able)."""
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
