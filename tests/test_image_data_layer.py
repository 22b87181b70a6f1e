"""ImageData, after Caffe's test_image_data_layer.cpp (TestRead, TestResize,
TestReshape, TestShuffle), plus real photos through a net, rand_skip,
transform_param, prefetch, resume and bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import layer_from
from image_helpers import photos, write_images

from caffesolve.blob import Blob
from caffesolve.errors import CaffesolveError, ConfigError, DataError, ShapeError
from caffesolve.layers import create_layer
from caffesolve.layers.image_data import ImageDataLayer
from caffesolve.net import Net
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def image_list(
    tmp_path: Path,
    paths: list[Path],
    labels: list[int] | None = None,
    full: bool = False,
) -> Path:
    """`name label` lines (the full path with `full`)."""
    lst = tmp_path / "list.txt"
    labels = list(range(len(paths))) if labels is None else labels
    names = [str(p) if full else p.name for p in paths]
    lst.write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))
    return lst


def layer(
    source: Path, root: str, params: str = "", extra: str = "", seed: int = 1701,
    phase: int = TRAIN,
) -> tuple[ImageDataLayer, list[Blob]]:  # fmt: skip
    text = (
        'name: "d" type: "ImageData" top: "data" top: "label" '
        f'image_data_param {{ source: "{source}" root_folder: "{root}" {params} }} '
        f"{extra}"
    )
    lay = layer_from(text, phase, seed)
    top = [Blob(), Blob()]
    lay.setup([], top)
    return lay, top  # type: ignore[return-value]


def bgr_chw(path: Path, h: int = 0, w: int = 0) -> np.ndarray:
    img = cv2.imread(str(path))
    if h:
        img = cv2.resize(img, (w, h))
    return img.transpose(2, 0, 1).astype(np.float32)


def test_read(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(6, 8)] * 5)
    lst = image_list(tmp_path, paths)
    lay, top = layer(lst, f"{tmp_path}/img/", "batch_size: 5")
    assert top[0].shape == (5, 3, 6, 8) and top[1].shape == (5,)
    for _ in range(2):  # in list order, wrapping
        lay.forward([], top)
        assert top[1].data.tolist() == [0, 1, 2, 3, 4]
        for i, p in enumerate(paths):
            np.testing.assert_array_equal(top[0].data[i], bgr_chw(p))


def test_resize_and_gray(tmp_path: Path) -> None:
    paths = photos()[:3]
    lst = image_list(tmp_path, paths)
    root = str(paths[0].parent) + "/"
    lay, top = layer(lst, root, "batch_size: 3 new_height: 40 new_width: 52")
    lay.forward([], top)
    assert top[0].shape == (3, 3, 40, 52)
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(top[0].data[i], bgr_chw(p, 40, 52))
    lay, top = layer(
        lst, root, "batch_size: 2 new_height: 9 new_width: 7 is_color: false"
    )
    lay.forward([], top)
    gray = cv2.resize(cv2.imread(str(paths[1]), cv2.IMREAD_GRAYSCALE), (7, 9))
    np.testing.assert_array_equal(top[0].data[1, 0], gray)


def test_reshape_batch_of_one(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(4, 5), (7, 3)])
    lay, top = layer(image_list(tmp_path, paths), f"{tmp_path}/img/", "batch_size: 1")
    shapes = []
    for _ in range(3):
        lay.forward([], top)
        shapes.append(top[0].shape)
    assert shapes == [(1, 3, 4, 5), (1, 3, 7, 3), (1, 3, 4, 5)]


def test_shuffle_each_epoch_is_a_permutation(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(3, 3)] * 5)
    lst = image_list(tmp_path, paths)
    lay, top = layer(lst, f"{tmp_path}/img/", "batch_size: 5 shuffle: true")
    epochs = []
    for _ in range(4):
        lay.forward([], top)
        labels = top[1].data.astype(int).tolist()
        assert sorted(labels) == [0, 1, 2, 3, 4]
        for k, lab in enumerate(labels):
            np.testing.assert_array_equal(top[0].data[k], bgr_chw(paths[lab]))
        epochs.append(labels)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled at each wrap
    again, top2 = layer(lst, f"{tmp_path}/img/", "batch_size: 5 shuffle: true")
    again.forward([], top2)
    assert top2[1].data.astype(int).tolist() == epochs[0]  # seeded by the net


def test_rand_skip_and_transform(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(6, 6)] * 4)
    lst = image_list(tmp_path, paths)
    lay, top = layer(
        lst, f"{tmp_path}/img/", "batch_size: 2 rand_skip: 4",
        "transform_param { crop_size: 4 mean_value: 10 scale: 0.5 }", phase=TEST,
    )  # fmt: skip
    lay.forward([], top)
    first = int(top[1].data[0])
    assert top[0].shape == (2, 3, 4, 4)
    ref = (bgr_chw(paths[first])[:, 1:5, 1:5] - 10) * np.float32(0.5)
    np.testing.assert_array_equal(top[0].data[0], ref)
    assert int(top[1].data[1]) == (first + 1) % 4


def test_prefetch_and_resume_agree(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(5, 5)] * 7)
    lst = image_list(tmp_path, paths)
    params = "batch_size: 3 shuffle: true"
    tp = "transform_param { mirror: true crop_size: 3 }"
    root = f"{tmp_path}/img/"
    plain, top_a = layer(lst, root, params, tp + " data_param { prefetch: 0 }")
    pre, top_b = layer(lst, root, params, tp)  # prefetch 4, Caffe's default
    assert plain.prefetcher is None and pre.prefetcher is not None
    for _ in range(4):
        plain.forward([], top_a)
        pre.forward([], top_b)
        np.testing.assert_array_equal(top_a[0].data, top_b[0].data)
    state = pre.get_state()
    assert state is not None
    ahead = []
    for _ in range(3):
        pre.forward([], top_b)
        ahead.append(top_b[0].data.copy())
    pre.set_state(state)
    for want in ahead:
        pre.forward([], top_b)
        np.testing.assert_array_equal(top_b[0].data, want)
    pre.close()


def test_real_photos_through_a_net(tmp_path: Path) -> None:
    """`caffesolve data images` on real photos, its mean, then an ImageData
    net forward with that mean: the net's first batch is the photos, resized
    as OpenCV would, minus the mean the tools computed."""
    from click.testing import CliRunner

    from caffesolve.cli import cli

    files = photos()
    lst = image_list(tmp_path, files, [i % 3 for i in range(len(files))], full=True)
    root = ""  # the list names each photo in full
    runner = CliRunner()
    db, mean = tmp_path / "photos_lmdb", tmp_path / "mean.binaryproto"
    size = ["--resize_height", "32", "--resize_width", "32"]
    r = runner.invoke(cli, ["data", "images", str(lst), root, str(db), *size])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli, ["data", "mean", str(db), str(mean)])
    assert r.exit_code == 0, r.stderr
    net_text = f"""
    name: "photos"
    layer {{ name: "data" type: "ImageData" top: "data" top: "label"
      transform_param {{ mean_file: "{mean}" }}
      image_data_param {{ source: "{lst}" root_folder: "{root}" batch_size: 3
                          new_height: 32 new_width: 32 }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
      inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
      top: "loss" }}
    """
    net = Net(parse_prototxt_text(net_text, caffe_pb2.NetParameter()), TRAIN,
              rng=np.random.default_rng(1701), quiet=True)  # fmt: skip
    loss = net.forward()
    assert np.isfinite(loss) and loss > 0
    stack = np.stack([bgr_chw(p, 32, 32) for p in files])
    expected = np.zeros(stack.shape[1:], np.float32)
    for im in stack:  # compute_image_mean's float running sum
        expected = (expected + im).astype(np.float32)
    expected /= np.float32(len(files))
    np.testing.assert_array_equal(net.blob_by_name("data").data, stack[:3] - expected)


def test_bad_input(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(4, 4), (5, 5)])
    lst = image_list(tmp_path, paths)
    with pytest.raises(ConfigError, match="requires new_height and new_width"):
        layer(lst, f"{tmp_path}/img/", "batch_size: 1 new_height: 4")
    with pytest.raises(ConfigError, match="Not enough points to skip"):
        layer(lst, f"{tmp_path}/img/", "batch_size: 1 rand_skip: 100000")
    lay, top = layer(lst, f"{tmp_path}/img/", "batch_size: 2")
    with pytest.raises(ShapeError, match=r"list.txt:2: image img1.jpg is 3x5x5, the "):
        lay.forward([], top)
    with pytest.raises(DataError, match=r"list.txt:1: Could not open .* use '"):
        layer(lst, f"{tmp_path}/img", "batch_size: 1")
    paths[1].write_bytes(b"broken")
    lay, top = layer(lst, f"{tmp_path}/img/", "batch_size: 1")
    lay.forward([], top)
    with pytest.raises(CaffesolveError, match=r"list.txt:2: .*img1.jpg: cannot decode"):
        lay.forward([], top)
    with pytest.raises(ConfigError, match="produces 2 top blob"):
        param = parse_prototxt_text(
            f'name: "d" type: "ImageData" top: "data" image_data_param {{ source: '
            f'"{lst}" }}',
            caffe_pb2.LayerParameter(),
        )
        create_layer(param).setup([], [Blob()])
