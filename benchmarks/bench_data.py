"""ms per LeNet batch (64) from an LMDB, with and without prefetch.

    python benchmarks/bench_data.py [--db PATH_TO_LMDB] [--iters 50]

Measures (1) the Data layer alone: forward() time per batch of 64 1x28x28
Datums scaled by 1/256, synchronous (data_param.prefetch: 0) and with the
background thread (prefetch: 4, Caffe's default); (2) a whole LeNet training
forward+backward (configs/lenet_train_test.prototxt) with each. Runs alternate
so that load on a shared machine hits both alike. Without --db, a temporary
LMDB of 10,000 random 28x28 images is written first (--encoded: as PNGs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from caffesolve.blob import Blob
from caffesolve.data.lmdb_source import write_datum_lmdb
from caffesolve.layers import create_layer
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text, read_prototxt

ROOT = Path(__file__).resolve().parents[1]


def data_param_text(db: str, prefetch: int) -> str:
    return (
        'name: "mnist" type: "Data" top: "data" top: "label" '
        "transform_param { scale: 0.00390625 } "
        f'data_param {{ source: "{db}" batch_size: 64 backend: LMDB '
        f"prefetch: {prefetch} }}"
    )


def time_layer(db: str, prefetch: int, iters: int) -> float:
    """ms per forward() of the Data layer alone."""
    param = parse_prototxt_text(
        data_param_text(db, prefetch), caffe_pb2.LayerParameter()
    )
    layer = create_layer(param, caffe_pb2.TRAIN, np.random.default_rng(0))
    top = [Blob(), Blob()]
    layer.setup([], top)
    layer.forward([], top)
    if prefetch:
        time.sleep(0.05)  # let the thread fill its queue, as during training
    t = time.perf_counter()
    for _ in range(iters):
        layer.forward([], top)
    ms = (time.perf_counter() - t) / iters * 1e3
    layer.close()  # type: ignore[attr-defined]
    return ms


def lenet(db: str, prefetch: int) -> object:
    """LeNet's training net (configs/lenet_train_test.prototxt) reading `db`."""
    from caffesolve.net import Net

    net_param = read_prototxt(
        ROOT / "configs" / "lenet_train_test.prototxt", caffe_pb2.NetParameter()
    )
    for layer in net_param.layer:
        if layer.type == "Data":
            layer.data_param.source = db
            layer.data_param.prefetch = prefetch
    return Net(net_param, caffe_pb2.TRAIN, rng=np.random.default_rng(0))


def time_lenet_interleaved(
    db: str, iters: int, chunk: int = 5
) -> dict[int, list[float]]:
    """ms per LeNet forward+backward, sync and prefetching nets side by side.

    The two nets run alternately, `chunk` iterations at a time, so that the
    load of a shared machine falls on both alike; returns per-chunk ms.
    """
    nets = {0: lenet(db, 0), 4: lenet(db, 4)}
    for net in nets.values():
        for _ in range(3):
            net.forward_backward()  # type: ignore[attr-defined]
    out: dict[int, list[float]] = {0: [], 4: []}
    for _ in range(iters // chunk):
        for prefetch, net in nets.items():
            t = time.perf_counter()
            for _ in range(chunk):
                net.forward_backward()  # type: ignore[attr-defined]
            out[prefetch].append((time.perf_counter() - t) / chunk * 1e3)
    for net in nets.values():
        for layer in net.layers:  # type: ignore[attr-defined]
            if hasattr(layer, "close"):
                layer.close()
    return out


def write_random_lmdb(db: str, encoded: bool, n: int = 10000) -> None:
    """n random 28x28 images, raw (convert_mnist_data) or PNG-encoded Datums."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    if not encoded:
        write_datum_lmdb(db, images, labels)
        return
    import io

    import lmdb
    from PIL import Image

    env = lmdb.open(db, map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            d = caffe_pb2.Datum(data=buf.getvalue(), encoded=True, label=int(labels[i]))
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="an LMDB of 1x28x28 Datums (default: random)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-net", action="store_true", help="time the layer only")
    ap.add_argument(
        "--encoded", action="store_true", help="random images stored as PNG Datums"
    )
    args = ap.parse_args()
    LOG.quiet = True
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db
        if db is None:
            db = str(Path(tmp) / "random_lmdb")
            write_random_lmdb(db, args.encoded)
        runs: dict[int, list[float]] = {0: [], 4: []}
        for _ in range(args.repeats):
            for prefetch in (0, 4):
                runs[prefetch].append(time_layer(db, prefetch, 20 * args.iters))
        report("Data layer alone", runs)
        if not args.no_net:
            report(
                "LeNet forward+backward",
                time_lenet_interleaved(db, args.iters * args.repeats),
            )


def report(title: str, runs: dict[int, list[float]]) -> None:
    for prefetch, ms in runs.items():
        how = "prefetch: 4 (thread)" if prefetch else "prefetch: 0 (sync)  "
        print(
            f"{title:24s} {how}  median {statistics.median(ms):8.3f} "
            f"min {min(ms):8.3f} mean {statistics.mean(ms):8.3f} ms/batch "
            f"({len(ms)} runs)"
        )


if __name__ == "__main__":
    main()
