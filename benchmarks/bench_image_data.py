"""ImageData: ms per batch, with and without prefetch; the resize's cost.

    python benchmarks/bench_image_data.py [--iters 20]

Uses the real photos the `test` extra installs (scikit-image's samples,
matplotlib's grace_hopper.jpg), listed over and over. Measures, in
alternating runs:
(1) the ImageData layer alone: forward() per batch of 16 photos decoded and
    resized to 227x227 (CaffeNet's input), synchronous (data_param.prefetch
    unset) and with the background thread (prefetch: 4, Caffe's default);
(2) the same layer feeding a small conv net, forward+backward per iteration,
    both ways (does the thread hide the decode behind the net?);
(3) one 512x512 colour photo resized to 227x227: caffesolve's NumPy
    INTER_LINEAR against cv2.resize (same bytes) and Pillow's BILINEAR.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from image_helpers import photos  # noqa: E402

from caffesolve.blob import Blob  # noqa: E402
from caffesolve.data.image import read_image, resize_linear  # noqa: E402
from caffesolve.layers import create_layer  # noqa: E402
from caffesolve.log import LOG  # noqa: E402
from caffesolve.net import Net  # noqa: E402
from caffesolve.proto import caffe_pb2  # noqa: E402
from caffesolve.proto.io import parse_prototxt_text  # noqa: E402


def layer_text(source: Path, prefetch: bool) -> str:
    pre = "data_param { prefetch: 4 }" if prefetch else ""
    return (
        'name: "data" type: "ImageData" top: "data" top: "label" '
        "transform_param { mirror: true crop_size: 227 mean_value: 104 "
        "mean_value: 117 mean_value: 123 } "
        f'image_data_param {{ source: "{source}" root_folder: "" batch_size: 16 '
        f"new_height: 256 new_width: 256 shuffle: true }} {pre}"
    )


NET = """
name: "small"
layer {{ {data} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 16 kernel_size: 11 stride: 4
    weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
  inner_product_param {{ num_output: 9 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label"
  top: "loss" }}
"""


def time_layer(source: Path, prefetch: bool, iters: int) -> float:
    param = parse_prototxt_text(
        layer_text(source, prefetch), caffe_pb2.LayerParameter()
    )
    layer = create_layer(param, caffe_pb2.TRAIN, np.random.default_rng(0))
    top = [Blob(), Blob()]
    layer.setup([], top)
    layer.forward([], top)
    if prefetch:
        time.sleep(1.0)  # let the thread fill its queue, as during training
    t = time.perf_counter()
    for _ in range(iters):
        layer.forward([], top)
    ms = (time.perf_counter() - t) / iters * 1e3
    layer.close()  # type: ignore[attr-defined]
    return ms


def time_net(source: Path, prefetch: bool, iters: int) -> float:
    text = NET.format(data=layer_text(source, prefetch))
    net = Net(parse_prototxt_text(text, caffe_pb2.NetParameter()), caffe_pb2.TRAIN,
              rng=np.random.default_rng(0), quiet=True)  # fmt: skip
    net.forward_backward()
    t = time.perf_counter()
    for _ in range(iters):
        net.forward_backward()
    ms = (time.perf_counter() - t) / iters * 1e3
    net.layers[0].close()  # type: ignore[attr-defined]
    return ms


def time_resize(reps: int = 20) -> dict[str, float]:
    import cv2
    from PIL import Image

    img = read_image(str(photos()[0]))  # astronaut.png, 512x512
    pil = Image.fromarray(img[:, :, ::-1])
    out = {}
    for name, fn in (
        ("caffesolve (NumPy)", lambda: resize_linear(img, 227, 227)),
        ("cv2.resize", lambda: cv2.resize(img, (227, 227))),
        ("Pillow BILINEAR", lambda: pil.resize((227, 227), Image.BILINEAR)),
    ):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name] = (time.perf_counter() - t) / reps * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    LOG.quiet = True
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "list.txt"
        files = photos()
        source.write_text("".join(f"{p} {i}\n" for i, p in enumerate(files)) * 4)
        rows: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for prefetch in (False, True):
                tag = "prefetch: 4" if prefetch else "no prefetch"
                rows.setdefault(f"layer alone, {tag}", []).append(
                    time_layer(source, prefetch, args.iters)
                )
                rows.setdefault(f"layer + net fwd/bwd, {tag}", []).append(
                    time_net(source, prefetch, args.iters)
                )
        print(
            "ImageData, batch 16 photos -> 256x256 -> crop 227 (ms per batch, median)"
        )
        for name, values in rows.items():
            print(f"  {name:32s} {statistics.median(values):8.1f}")
        print("resize 512x512 -> 227x227, colour (ms)")
        for name, ms in time_resize().items():
            print(f"  {name:32s} {ms:8.2f}")


if __name__ == "__main__":
    main()
