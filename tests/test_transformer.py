"""DataTransformer against hand-computed results (after Caffe's
test_data_transformer.cpp: TestEmptyTransform, TestCropSize, TestMirror,
TestMeanValue, TestMeanValues, TestMeanFile)."""

from __future__ import annotations

import numpy as np
import pytest

from caffesolve.blob import Blob
from caffesolve.data.transformer import (
    DataTransformer,
    crop_mirror_index,
    transform_batch,
)
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text, write_binaryproto

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def tp(text: str) -> caffe_pb2.TransformationParameter:
    return parse_prototxt_text(text, caffe_pb2.TransformationParameter())


def ramp(n: int = 1, c: int = 1, h: int = 4, w: int = 4) -> np.ndarray:
    """uint8 batch whose pixel value is its flat index."""
    return np.arange(n * c * h * w, dtype=np.uint8).reshape(n, c, h, w)


def make(text: str, phase: int = TRAIN, seed: int = 1701) -> DataTransformer:
    return DataTransformer(tp(text), phase, np.random.default_rng(seed))


def test_empty_transform() -> None:
    x = ramp(2, 3, 4, 5)
    y = make("").transform(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32))


def test_scale() -> None:
    y = make("scale: 0.00390625").transform(np.array([[[[0, 128, 255]]]], np.uint8))
    np.testing.assert_array_equal(y.ravel(), [0.0, 0.5, 255 / 256])


def test_mean_value_then_scale() -> None:
    # (x - mean) * scale: Caffe subtracts before scaling.
    x = np.full((1, 1, 2, 2), 10, np.uint8)
    y = make("scale: 0.5 mean_value: 4").transform(x)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 3.0, np.float32))


def test_mean_values_per_channel() -> None:
    x = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30)])[None]
    y = make("mean_value: 1 mean_value: 2 mean_value: 3").transform(x)
    np.testing.assert_array_equal(y[0, :, 0, 0], [9, 18, 27])


def test_one_mean_value_for_all_channels() -> None:
    x = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 20, 30)])[None]
    y = make("mean_value: 5").transform(x)
    np.testing.assert_array_equal(y[0, :, 1, 1], [5, 15, 25])


def test_wrong_number_of_mean_values() -> None:
    with pytest.raises(ConfigError, match="Specify either 1 mean_value"):
        make("mean_value: 1 mean_value: 2").transform(ramp(1, 3, 2, 2))


def test_mean_file_and_mean_value_exclusive(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="Cannot specify mean_file and mean_value"):
        make('mean_file: "m.binaryproto" mean_value: 1')


def write_mean(path: str, mean: np.ndarray) -> None:
    b = Blob(mean.shape)
    b.data[...] = mean
    write_binaryproto(path, b.to_proto())


def test_mean_file(tmp_path: object) -> None:
    path = f"{tmp_path}/mean.binaryproto"
    mean = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) * 0.5
    write_mean(path, mean)
    x = np.full((1, 1, 4, 4), 100, np.uint8)
    y = make(f'mean_file: "{path}" scale: 2').transform(x)
    np.testing.assert_array_equal(y, (100 - mean) * 2)


def test_mean_file_with_center_crop_uses_datum_positions(tmp_path: object) -> None:
    # Caffe reads mean[data_index]: the mean at the uncropped position.
    path = f"{tmp_path}/mean.binaryproto"
    mean = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    write_mean(path, mean)
    x = np.full((1, 1, 4, 4), 50, np.uint8)
    y = make(f'mean_file: "{path}" crop_size: 2', TEST).transform(x)
    # centre crop of 4x4 by 2: offsets (1, 1) -> mean rows 1-2, cols 1-2
    np.testing.assert_array_equal(y[0, 0], [[50 - 5, 50 - 6], [50 - 9, 50 - 10]])


def test_mean_file_shape_mismatch(tmp_path: object) -> None:
    path = f"{tmp_path}/mean.binaryproto"
    write_mean(path, np.zeros((1, 1, 3, 3), np.float32))
    with pytest.raises(ShapeError, match="mean_file"):
        make(f'mean_file: "{path}"').transform(ramp())


def test_center_crop_in_test() -> None:
    x = ramp(1, 1, 5, 5)  # value = 5*h + w
    y = make("crop_size: 3", TEST).transform(x)
    # offsets (5-3)//2 = 1
    expected = [[6, 7, 8], [11, 12, 13], [16, 17, 18]]
    np.testing.assert_array_equal(y[0, 0], expected)


def test_crop_mirror_index_hand_computed() -> None:
    x = ramp(2, 2, 4, 4)
    rows, cols = crop_mirror_index(
        np.array([0, 2]), np.array([1, 0]), np.array([False, True]), (2, 3)
    )
    y = transform_batch(x, rows, cols, None, 1.0)
    # item 0: rows 0-1, cols 1-3, not mirrored
    np.testing.assert_array_equal(y[0, 0], [[1, 2, 3], [5, 6, 7]])
    np.testing.assert_array_equal(y[0, 1], [[17, 18, 19], [21, 22, 23]])
    # item 1: rows 2-3, cols 0-2, mirrored: out[w'] = in[width-1-w']
    base = 32
    np.testing.assert_array_equal(
        y[1, 0], [[base + 10, base + 9, base + 8], [base + 14, base + 13, base + 12]]
    )


def all_crops(img: np.ndarray, crop: int, mirror: bool) -> list[np.ndarray]:
    c, h, w = img.shape
    out = []
    for i in range(h - crop + 1):
        for j in range(w - crop + 1):
            patch = img[:, i : i + crop, j : j + crop]
            out.append(patch)
            if mirror:
                out.append(patch[:, :, ::-1])
    return out


def test_random_crop_and_mirror_in_train_are_valid_crops() -> None:
    x = ramp(40, 2, 5, 6)
    t = make("crop_size: 3 mirror: true scale: 2", TRAIN)
    y = t.transform(x)
    assert y.shape == (40, 2, 3, 3)
    mirrored = 0
    for n in range(40):
        plain = [p.astype(np.float32) * 2 for p in all_crops(x[n], 3, False)]
        flips = [p.astype(np.float32) * 2 for p in all_crops(x[n], 3, True)]
        assert any(np.array_equal(y[n], p) for p in flips)
        mirrored += not any(np.array_equal(y[n], p) for p in plain)
    assert 8 <= mirrored <= 32  # about half of the items are mirrored
    # different items get different offsets
    assert len({float(y[n, 0, 0, 0]) - x[n, 0, 0, 0] for n in range(40)}) > 3


def test_mirror_only_in_test_phase_still_mirrors() -> None:
    x = ramp(64, 1, 2, 3)
    y = make("mirror: true", TEST).transform(x)
    flipped = [np.array_equal(y[n], x[n, :, :, ::-1]) for n in range(64)]
    same = [np.array_equal(y[n], x[n]) for n in range(64)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54


def test_same_seed_same_result_and_state_round_trip() -> None:
    x = ramp(8, 1, 6, 6)
    a = make("crop_size: 4 mirror: true", TRAIN, seed=3)
    b = make("crop_size: 4 mirror: true", TRAIN, seed=3)
    np.testing.assert_array_equal(a.transform(x), b.transform(x))
    state = a.get_state()
    first = a.transform(x)
    a.set_state(state)
    np.testing.assert_array_equal(a.transform(x), first)


def test_float_data_input() -> None:
    x = np.array([[[[0.5, -1.0]]]], np.float32)
    y = make("scale: 2 mean_value: 0.5").transform(x)
    np.testing.assert_array_equal(y.ravel(), [0.0, -3.0])


def test_crop_larger_than_data() -> None:
    with pytest.raises(ShapeError, match="crop_size 5"):
        make("crop_size: 5").transform(ramp(1, 1, 4, 4))


def test_force_color_and_gray_exclusive() -> None:
    with pytest.raises(ConfigError, match="force_color and force_gray"):
        make("force_color: true force_gray: true")


def test_needs_rand_like_caffe() -> None:
    assert make("mirror: true", TEST).needs_rand
    assert make("crop_size: 2", TRAIN).needs_rand
    assert not make("crop_size: 2", TEST).needs_rand
