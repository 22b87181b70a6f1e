"""Data layer (LMDB), after Caffe's test_data_layer.cpp: TestReadLMDB,
TestReshapeLMDB, TestReadCropTrainLMDB, TestReadCropTestLMDB, plus wrap,
rand_skip, prefetch, resume and every bad input."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

from caffesolve.blob import Blob
from caffesolve.data.lmdb_source import mnist_datum_bytes, write_datum_lmdb
from caffesolve.errors import ConfigError, DataError
from caffesolve.layers import create_layer
from caffesolve.layers.base import Layer
from caffesolve.layers.data import DataLayer
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def images_labels(n: int, h: int = 3, w: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with i (plus its pixel index), label i % 10."""
    imgs = (np.arange(n)[:, None, None] * 10 + np.arange(h * w).reshape(h, w)) % 256
    return imgs.astype(np.uint8), (np.arange(n) % 10).astype(np.uint8)


def make_db(path: Path, n: int = 5) -> Path:
    imgs, labels = images_labels(n)
    write_datum_lmdb(path, imgs, labels)
    return path


def layer(
    source: Path | str,
    extra: str = "",
    batch: int = 3,
    phase: int = TRAIN,
    seed: int = 1701,
    tops: int = 2,
    prefetch: int | None = None,
) -> tuple[DataLayer, list[Blob]]:
    pre = "" if prefetch is None else f"prefetch: {prefetch}"
    label = 'top: "label"' if tops == 2 else ""
    text = (
        f'name: "data" type: "Data" top: "data" {label} '
        f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {pre} }} '
        f"{extra}"
    )
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter())
    lay = create_layer(param, phase, np.random.default_rng(seed))
    top = [Blob() for _ in range(tops)]
    lay.setup([], top)
    return lay, top  # type: ignore[return-value]


def test_read_lmdb_in_key_order_and_wrap(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 5)
    imgs, labels = images_labels(5)
    lay, top = layer(db, batch=3)
    assert top[0].shape == (3, 1, 3, 4) and top[1].shape == (3,)
    seen = []
    for _ in range(4):
        lay.forward([], top)
        seen.append(top[1].data.copy())
        for k in range(3):
            i = int(top[0].data[k, 0, 0, 0]) // 10
            np.testing.assert_array_equal(top[0].data[k, 0], imgs[i])
    order = [int(v) for v in np.concatenate(seen)]
    # 12 records from 5: wraps at the end of the database, in key order
    assert order == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    lay.close()


def test_prefetch_and_synchronous_agree(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 7)
    extra = "transform_param { crop_size: 2 mirror: true scale: 0.5 }"
    a, ta = layer(db, extra, batch=4, prefetch=4)
    b, tb = layer(db, extra, batch=4, prefetch=0)
    c, _ = layer(db, extra, batch=4)  # default: no thread (see DataLayer)
    assert b.prefetcher is None and c.prefetcher is None
    assert a.prefetcher is not None
    for _ in range(5):
        a.forward([], ta)
        b.forward([], tb)
        np.testing.assert_array_equal(ta[0].data, tb[0].data)
        np.testing.assert_array_equal(ta[1].data, tb[1].data)
    a.close()


def test_transform_scale_and_test_crop(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 2)
    imgs, _ = images_labels(2)
    lay, top = layer(
        db, "transform_param { scale: 0.5 crop_size: 2 }", batch=2, phase=TEST
    )
    lay.forward([], top)
    assert top[0].shape == (2, 1, 2, 2)
    # TEST: centre crop, offsets ((3-2)//2, (4-2)//2) = (0, 1)
    np.testing.assert_array_equal(top[0].data[1, 0], imgs[1, 0:2, 1:3] * 0.5)


def test_deprecated_data_param_scale(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 2)
    imgs, _ = images_labels(2)
    param = parse_prototxt_text(
        f'name: "d" type: "Data" top: "data" data_param {{ source: "{db}" '
        "batch_size: 2 backend: LMDB scale: 0.25 }",
        caffe_pb2.LayerParameter(),
    )
    lay = create_layer(param, TRAIN, np.random.default_rng(0))
    top = [Blob()]
    lay.setup([], top)
    lay.forward([], top)
    np.testing.assert_array_equal(top[0].data[:, 0], imgs * np.float32(0.25))


def test_data_only_top(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 3)
    lay, top = layer(db, batch=2, tops=1)
    lay.forward([], top)
    assert top[0].shape == (2, 1, 3, 4)


def test_rand_skip_starts_within_range(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 10)
    starts = set()
    for seed in range(12):
        param_text = f'source: "{db}" batch_size: 3 backend: LMDB rand_skip: 4'
        param = parse_prototxt_text(
            f'name: "d" type: "Data" top: "data" top: "label" '
            f"data_param {{ {param_text} prefetch: 0 }}",
            caffe_pb2.LayerParameter(),
        )
        lay3 = create_layer(param, TRAIN, np.random.default_rng(seed))
        t3 = [Blob(), Blob()]
        lay3.setup([], t3)
        lay3.forward([], t3)
        first = [int(v) for v in t3[1].data]
        assert 0 <= first[0] < 4
        assert first == [first[0], first[0] + 1, first[0] + 2]  # then in order
        starts.add(first[0])
    assert len(starts) > 1  # the skip is random


def test_float_data_datums(tmp_path: Path) -> None:
    path = tmp_path / "fdb"
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i in range(3):
            d = caffe_pb2.Datum(channels=2, height=1, width=2, label=i)
            d.float_data.extend([i + 0.5, -i, 2.0 * i, 0.25])
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()
    lay, top = layer(path, batch=3)
    lay.forward([], top)
    assert top[0].shape == (3, 2, 1, 2)
    np.testing.assert_array_equal(top[0].data[2].ravel(), [2.5, -2, 4, 0.25])
    np.testing.assert_array_equal(top[1].data, [0, 1, 2])


def test_encoded_png_datums(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    path = tmp_path / "enc"
    env = lmdb.open(str(path), map_size=1 << 20)
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = np.stack([gray, gray // 2, gray // 4], axis=-1)
    with env.begin(write=True) as txn:
        for i, arr in enumerate((gray, gray)):
            buf = io.BytesIO()
            image_module.fromarray(arr).save(buf, format="PNG")
            d = caffe_pb2.Datum(data=buf.getvalue(), encoded=True, label=i)
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()
    lay, top = layer(path, batch=2)
    lay.forward([], top)
    assert top[0].shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(top[0].data[0, 0], gray)
    # force_color: 3 channels, BGR order like OpenCV
    path2 = tmp_path / "enc_rgb"
    env = lmdb.open(str(path2), map_size=1 << 20)
    with env.begin(write=True) as txn:
        buf = io.BytesIO()
        image_module.fromarray(rgb).save(buf, format="PNG")
        d = caffe_pb2.Datum(data=buf.getvalue(), encoded=True, label=0)
        txn.put(b"00000000", d.SerializeToString())
    env.close()
    lay, top = layer(path2, batch=1)
    lay.forward([], top)
    np.testing.assert_array_equal(top[0].data[0], rgb[:, :, ::-1].transpose(2, 0, 1))


@pytest.mark.parametrize("prefetch", [None, 3])
def test_resume_is_bit_exact(tmp_path: Path, prefetch: int | None) -> None:
    # with the thread, batches read ahead are not part of the saved state
    db = make_db(tmp_path / "db", 7)
    extra = "transform_param { crop_size: 2 mirror: true }"
    a, ta = layer(db, extra, batch=3, seed=5, prefetch=prefetch)
    for _ in range(2):
        a.forward([], ta)
    state = a.get_state()
    after = []
    for _ in range(3):
        a.forward([], ta)
        after.append((ta[0].data.copy(), ta[1].data.copy()))
    # a fresh layer (other seed) restored from the state gives the same batches
    b, tb = layer(db, extra, batch=3, seed=99, prefetch=prefetch)
    b.set_state(state)
    for data, label in after:
        b.forward([], tb)
        np.testing.assert_array_equal(tb[0].data, data)
        np.testing.assert_array_equal(tb[1].data, label)
    # and the same layer rewound
    a.set_state(state)
    a.forward([], ta)
    np.testing.assert_array_equal(ta[0].data, after[0][0])
    a.close()
    b.close()


def test_two_layers_share_one_database(tmp_path: Path) -> None:
    # the autoencoder's test-on-train net reads the train database too
    db = make_db(tmp_path / "db", 4)
    a, ta = layer(db, batch=2)
    b, tb = layer(db, batch=3, phase=TEST)
    a.forward([], ta)
    b.forward([], tb)
    assert list(ta[1].data) == [0, 1] and list(tb[1].data) == [0, 1, 2]


def test_database_is_not_modified(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 4)
    before = {p.name: p.read_bytes() for p in db.iterdir()}
    lay, top = layer(db, batch=3)
    for _ in range(3):
        lay.forward([], top)
    lay.close()
    after = {p.name: p.read_bytes() for p in db.iterdir()}
    assert before == after


def test_missing_source_suggests_command(tmp_path: Path) -> None:
    src = tmp_path / "data" / "mnist" / "mnist_train_lmdb"
    with pytest.raises(DataError) as e:
        layer(src)
    msg = str(e.value)
    assert str(src) in msg and "layer 'data' (Data)" in msg
    assert f"caffesolve data mnist --out {src.parent}" in msg
    src = tmp_path / "fashion_mnist_test_lmdb"
    with pytest.raises(DataError, match="caffesolve data fashion-mnist --out"):
        layer(src)
    with pytest.raises(DataError) as e:
        layer(tmp_path / "other_lmdb")
    assert "caffesolve data" not in str(e.value)


def make_leveldb(path: Path, n: int = 5) -> Path:
    """The records of make_db, written by plyvel itself (keys "%08d")."""
    import plyvel

    imgs, labels = images_labels(n)
    db = plyvel.DB(str(path), create_if_missing=True)
    for i in range(n):
        db.put(f"{i:08d}".encode(), mnist_datum_bytes(imgs[i], labels[i]))
    db.close()
    return path


def leveldb_layer(
    source: Path, batch: int = 3, extra: str = ""
) -> tuple[Layer, list[Blob]]:
    param = parse_prototxt_text(
        f'name: "d" type: "Data" top: "data" top: "label" data_param {{ '
        f'source: "{source}" batch_size: {batch} }} {extra}',  # LEVELDB: the default
        caffe_pb2.LayerParameter(),
    )
    lay = create_layer(param, TRAIN, np.random.default_rng(1701))
    top = [Blob(), Blob()]
    lay.setup([], top)
    return lay, top


def test_read_leveldb_like_lmdb(tmp_path: Path) -> None:
    ldb = make_leveldb(tmp_path / "ldb", 5)
    a, top_a = leveldb_layer(ldb, extra="transform_param { crop_size: 2 mirror: true }")
    b, top_b = layer(make_db(tmp_path / "db", 5),
                     extra="transform_param { crop_size: 2 mirror: true }")  # fmt: skip
    for _ in range(4):  # wraps at the end, in key order, as the LMDB
        a.forward([], top_a)
        b.forward([], top_b)
        np.testing.assert_array_equal(top_a[0].data, top_b[0].data)
        np.testing.assert_array_equal(top_a[1].data, top_b[1].data)
    state = a.get_state()
    a.forward([], top_a)
    want = top_a[0].data.copy()
    a.set_state(state)  # type: ignore[arg-type]
    a.forward([], top_a)
    np.testing.assert_array_equal(top_a[0].data, want)
    # a train and a test net may read one LevelDB (LevelDB locks it to one opener)
    leveldb_layer(ldb)
    a.close()
    b.close()


def test_backend_mismatch_names_the_fix(tmp_path: Path) -> None:
    db = make_db(tmp_path / "db", 2)
    with pytest.raises(
        ConfigError, match="backend is LEVELDB .Caffe's default. .*add `backend: LMDB`"
    ):
        leveldb_layer(db)
    ldb = make_leveldb(tmp_path / "ldb", 2)
    with pytest.raises(ConfigError, match="is an LEVELDB: add `backend: LEVELDB`"):
        layer(ldb)


def test_leveldb_without_plyvel_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ldb = make_leveldb(tmp_path / "ldb", 2)
    monkeypatch.setitem(sys.modules, "plyvel", None)
    with pytest.raises(
        DataError, match=r"layer 'd' .Data.: LevelDB .*'caffesolve\[leveldb\]'"
    ):
        leveldb_layer(ldb)


def test_window_data_is_refused() -> None:
    param = parse_prototxt_text(
        'name: "w" type: "WindowData" top: "data" top: "label"',
        caffe_pb2.LayerParameter(),
    )
    with pytest.raises(
        ConfigError, match="layer 'w' .WindowData.: WindowData .* not supported"
    ):
        create_layer(param).setup([], [Blob(), Blob()])


def test_not_an_lmdb(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an LMDB"):
        layer(tmp_path / "empty")


def test_mixed_shapes_in_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "mixed"
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i, (h, w) in enumerate([(2, 2), (2, 3)]):
            d = caffe_pb2.Datum(channels=1, height=h, width=w, data=bytes(h * w))
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()
    lay, top = layer(path, batch=2, prefetch=0)
    with pytest.raises(DataError, match="same shape"):
        lay.forward([], top)


def test_error_in_prefetch_thread_is_raised_in_forward(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        good = caffe_pb2.Datum(channels=1, height=1, width=2, data=b"ab")
        txn.put(b"0", good.SerializeToString())
        short = caffe_pb2.Datum(channels=1, height=1, width=2, data=b"a")
        txn.put(b"1", short.SerializeToString())
    env.close()
    lay, top = layer(path, batch=2, prefetch=2)
    with pytest.raises(DataError, match="wrong length"):
        lay.forward([], top)
