"""ImageData: batches of image files named in a list file (image_data_layer.cpp)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from caffesolve.blob import Blob
from caffesolve.data.image import hwc_to_chw, read_image
from caffesolve.data.imageset import ImageLine, image_path, read_image_list
from caffesolve.data.transformer import DataTransformer
from caffesolve.errors import DataError, ShapeError
from caffesolve.layers import register
from caffesolve.layers.data import (
    BasePrefetchingDataLayer,
    Batch,
    effective_transform_param,
)
from caffesolve.log import LOG


class _ImageBatchLoader:
    """Reads, decodes, resizes and transforms one batch of listed images.

    The line order is `lines[order]`; with shuffle, `order` is a permutation
    drawn from the shuffle Generator at start and at each wrap. Its state is
    the line position, the Generator's state before the current permutation
    was drawn (so a restore draws the same one again) and the transformer's
    Generator.
    """

    def __init__(
        self,
        layer: ImageDataLayer,
        lines: list[ImageLine],
        transformer: DataTransformer,
        shuffle_rng: np.random.Generator | None,
    ) -> None:
        p = layer.layer_param.image_data_param
        self.where = layer.where()
        self.source = p.source
        self.root = p.root_folder
        self.height, self.width = int(p.new_height), int(p.new_width)
        self.is_color = bool(p.is_color)
        self.batch_size = int(p.batch_size)
        self.lines = lines
        self.transformer = transformer
        self.shuffle_rng = shuffle_rng
        self.order = np.arange(len(lines))
        self.shuffle_state: dict[str, Any] | None = None
        self.lines_id = 0
        self.solver_rank, self.solver_count = 0, 1  # Layer.shard
        if shuffle_rng is not None:
            LOG.info("image_data_layer.cpp:52", "Shuffling data")
            self._shuffle()

    def _shuffle(self) -> None:
        """Caffe's ShuffleImages: a fresh random order of the lines."""
        assert self.shuffle_rng is not None
        self.shuffle_state = self.shuffle_rng.bit_generator.state
        self.order = self.shuffle_rng.permutation(len(self.lines))

    def current(self) -> ImageLine:
        return self.lines[int(self.order[self.lines_id])]

    def read(self, line: ImageLine) -> npt.NDArray[np.uint8]:
        """The line's image as (C, H, W) uint8 BGR, resized if asked."""
        filename = image_path(self.root, line, self.source)
        try:
            img = read_image(filename, self.height, self.width, self.is_color)
        except DataError as e:
            raise DataError(f"{self.where}: {self.source}:{line.line}: {e}") from None
        return hwc_to_chw(img)

    def state(self) -> dict[str, Any]:
        return {
            "lines_id": self.lines_id,
            "shuffle": self.shuffle_state,
            "rng": self.transformer.get_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("shuffle") is not None and self.shuffle_rng is not None:
            self.shuffle_rng.bit_generator.state = state["shuffle"]
            self._shuffle()
        self.lines_id = int(state["lines_id"])
        self.transformer.set_state(state["rng"])

    def load(self) -> Batch:
        """The next batch_size lines' images; sharded, this rank's lines of
        the next solver_count x batch_size (the others are not read)."""
        images, labels, lines = [], [], []
        for i in range(self.batch_size * self.solver_count):
            if i % self.solver_count == self.solver_rank:
                line = self.current()
                images.append(self.read(line))
                labels.append(line.label)
                lines.append(line)
            self.lines_id += 1
            if self.lines_id >= len(self.lines):  # restart, reshuffled
                self.lines_id = 0
                if self.shuffle_rng is not None:
                    self._shuffle()
        label = np.asarray(labels, np.float32)
        shape = images[0].shape
        if all(im.shape == shape for im in images):
            data = self.transformer.transform(np.stack(images))
            return Batch(data, label, self.state())
        bad = next(i for i, im in enumerate(images) if im.shape != shape)
        if not self.transformer.param.crop_size:
            raise ShapeError(
                f"{self.where}: {self.source}:{lines[bad].line}: image "
                f"{lines[bad].path} is {'x'.join(map(str, images[bad].shape))}, "
                f"the batch's first ({lines[0].path}) is "
                f"{'x'.join(map(str, shape))}; set image_data_param.new_height "
                "and new_width (or transform_param.crop_size)"
            )
        # Caffe crops each image from its own size: one at a time here
        data = np.concatenate([self.transformer.transform(im[None]) for im in images])
        return Batch(data, label, self.state())


@register
class ImageDataLayer(BasePrefetchingDataLayer):
    """Caffe's ImageData (image_data_layer.cpp): tops data (N, C, H, W) and
    label (N,) from the `path label` lines of image_data_param.source.

    Each image is root_folder + path, decoded as cv::imread would (BGR, or
    gray with is_color: false), resized to new_height x new_width as
    cv::resize INTER_LINEAR would (bit-exact; data/image.py), then transformed
    by transform_param like the Data layer's Datums. Lines are read in order
    and wrap at the end; with shuffle they are shuffled at start and at each
    wrap (seeded from the net's random_seed); rand_skip skips a random count
    in [0, rand_skip) at start. Batches are shaped by their first image; the
    others must match it unless crop_size crops each.

    Unlike Data, ImageData prefetches by default (data_param.prefetch, 4), as
    Caffe does: decoding and resizing photos is slow and runs beside the net
    (Pillow's decoders release the GIL). benchmarks/bench_image_data.py: 16
    photos to 256x256 then a small conv net, 1.2x to 1.5x faster an iteration
    with the thread. `data_param { prefetch: 0 }` turns it off.
    """

    type = "ImageData"
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2
    prefetch_by_default = True

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.layer_param.image_data_param
        if (p.new_height == 0) != (p.new_width == 0):
            raise self.config_error(
                "Current implementation requires new_height and new_width to be "
                "set at the same time."
            )
        if p.batch_size <= 0:
            raise self.config_error("image_data_param.batch_size must be positive")
        if not p.source:
            raise self.config_error("image_data_param.source is required")
        # Caffe's seeds, in its order: the transformer's, the shuffle's, the skip
        seed = int(self.rng.integers(0, 2**63))
        transformer = DataTransformer(
            effective_transform_param(self.layer_param, p),
            self.phase,
            np.random.default_rng(seed),
            self.where(),
        )
        LOG.info("image_data_layer.cpp:38", f"Opening file {p.source}")
        lines = read_image_list(p.source, self.where())
        shuffle_rng = (
            np.random.default_rng(int(self.rng.integers(0, 2**63)))
            if p.shuffle
            else None
        )
        self.loader = loader = _ImageBatchLoader(self, lines, transformer, shuffle_rng)
        LOG.info("image_data_layer.cpp:58", f"A total of {len(lines)} images.")
        if p.rand_skip:
            skip = int(self.rng.integers(0, p.rand_skip))
            LOG.info("image_data_layer.cpp:64", f"Skipping first {skip} data points.")
            if skip >= len(lines):
                raise self.config_error(
                    f"Not enough points to skip ({skip} of {len(lines)} images; "
                    "image_data_param.rand_skip)"
                )
            loader.lines_id = skip
        first = loader.read(loader.current())
        shape = transformer.infer_blob_shape(*first.shape)
        shape[0] = int(p.batch_size)
        top[0].reshape(shape)
        LOG.info(
            "image_data_layer.cpp:81", f"output data size: {','.join(map(str, shape))}"
        )
        top[1].reshape([int(p.batch_size)])
        self.output_labels = True
        self.start_loading()
