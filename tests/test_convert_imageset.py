"""convert_imageset (`caffesolve data images`): list files, keys, Datum bytes
worked out from Caffe's ReadImageToDatum / CVMatToDatum, encodings, LevelDB,
and bad input leaving nothing behind."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import plyvel
import pytest
from conftest import varint
from image_helpers import photos, write_images
from test_datasets import read_lmdb

from caffesolve.data.imageset import convert_imageset, read_image_list
from caffesolve.errors import DataError
from caffesolve.proto import caffe_pb2


def caffe_raw_datum(img: np.ndarray, label: int) -> bytes:
    """CVMatToDatum + set_label, serialized by hand: channels (field 1),
    height (2), width (3), data (4: CHW bytes), label (5), encoded (7) = 0,
    which CVMatToDatum sets explicitly."""
    h, w, c = img.shape
    data = img.transpose(2, 0, 1).tobytes()
    return (
        b"\x08" + varint(c) + b"\x10" + varint(h) + b"\x18" + varint(w)
        + b"\x22" + varint(len(data)) + data
        + b"\x28" + varint(label) + b"\x38\x00"
    )  # fmt: skip


def caffe_encoded_datum(data: bytes, label: int) -> bytes:
    """ReadFileToDatum: data (4), label (5), encoded (7) = 1."""
    return b"\x22" + varint(len(data)) + data + b"\x28" + varint(label) + b"\x38\x01"


def listed(tmp_path: Path, names: list[str], labels: list[int]) -> Path:
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))
    return lst


def test_raw_datums_keys_and_bytes(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(5, 7), (6, 4), (3, 3)])
    names = [p.name for p in paths]
    lst = listed(tmp_path, names, [3, 0, 9])
    n = convert_imageset(lst, str(tmp_path / "img") + "/", tmp_path / "db")
    assert n == 3
    items = read_lmdb(tmp_path / "db")
    assert [k for k, _ in items] == [
        f"{i:08d}_{m}".encode() for i, m in enumerate(names)
    ]
    for (_, value), path, label in zip(items, paths, [3, 0, 9]):
        assert value == caffe_raw_datum(cv2.imread(str(path)), label)


def test_resize_gray_and_real_photos(tmp_path: Path) -> None:
    files = photos()[:4]
    lst = listed(tmp_path, [p.name for p in files], [0, 1, 2, 3])
    root = str(files[0].parent) + "/"
    convert_imageset(lst, root, tmp_path / "db", resize_height=48, resize_width=64,
                     gray=True)  # fmt: skip
    for (_, value), path, label in zip(read_lmdb(tmp_path / "db"), files, range(4)):
        ref = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (64, 48))
        assert value == caffe_raw_datum(ref[:, :, None], label)


def test_encoded_keeps_the_file_or_reencodes(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(8, 9), (10, 6)])
    lst = listed(tmp_path, [p.name for p in paths], [1, 2])
    root = str(tmp_path / "img") + "/"
    convert_imageset(lst, root, tmp_path / "enc", encoded=True)
    for (_, value), path, label in zip(read_lmdb(tmp_path / "enc"), paths, [1, 2]):
        assert value == caffe_encoded_datum(path.read_bytes(), label)
    # png for both: the .png is kept as it is, the .jpg re-encoded as PNG
    convert_imageset(lst, root, tmp_path / "png", encode_type="png")
    items = read_lmdb(tmp_path / "png")
    assert items[0][1] == caffe_encoded_datum(paths[0].read_bytes(), 1)
    d = caffe_pb2.Datum.FromString(items[1][1])
    assert d.encoded and d.label == 2 and d.data[:4] == b"\x89PNG"
    decoded = cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded, cv2.imread(str(paths[1])))
    # resized: re-encoded even when the type matches
    convert_imageset(lst, root, tmp_path / "rs", encoded=True, resize_height=4,
                     resize_width=5)  # fmt: skip
    d = caffe_pb2.Datum.FromString(read_lmdb(tmp_path / "rs")[0][1])
    decoded = cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(
        decoded, cv2.resize(cv2.imread(str(paths[0])), (5, 4))
    )


def test_shuffle_is_seeded_and_keys_follow_the_new_order(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(3, 3)] * 6)
    lst = listed(tmp_path, [p.name for p in paths], list(range(6)))
    root = str(tmp_path / "img") + "/"
    convert_imageset(lst, root, tmp_path / "a", shuffle=True, seed=5)
    convert_imageset(lst, root, tmp_path / "b", shuffle=True, seed=5)
    a, b = read_lmdb(tmp_path / "a"), read_lmdb(tmp_path / "b")
    assert a == b
    order = np.random.default_rng(5).permutation(6)
    assert [k for k, _ in a] == [f"{i:08d}_img{j}.{'png' if j % 2 == 0 else 'jpg'}"
                                 .encode() for i, j in enumerate(order)]  # fmt: skip


def test_leveldb_backend(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(4, 5), (4, 5)])
    lst = listed(tmp_path, [p.name for p in paths], [7, 8])
    convert_imageset(
        lst, str(tmp_path / "img") + "/", tmp_path / "ldb", backend="leveldb"
    )
    db = plyvel.DB(str(tmp_path / "ldb"))
    items = list(db)
    db.close()
    assert [k for k, _ in items] == [b"00000000_img0.png", b"00000001_img1.jpg"]
    assert items[1][1] == caffe_raw_datum(cv2.imread(str(paths[1])), 8)


def test_check_size_and_bad_images_leave_nothing(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "img", [(4, 5), (6, 5)])
    lst = listed(tmp_path, [p.name for p in paths], [0, 1])
    root = str(tmp_path / "img") + "/"
    with pytest.raises(DataError, match=r"list.txt:2: .*img1.jpg is 3x6x5, the first"):
        convert_imageset(lst, root, tmp_path / "db", check_size=True)
    (tmp_path / "img" / "img1.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match="img1.jpg: cannot decode the image"):
        convert_imageset(lst, root, tmp_path / "db")
    with pytest.raises(DataError, match=r"list.txt:1: Could not open .* use '.*img/'"):
        convert_imageset(lst, str(tmp_path / "img"), tmp_path / "db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "list.txt"]


def test_list_file_rules(tmp_path: Path) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("a b/c d.png 4\r\n\nx.jpg -1\n")
    lines = read_image_list(lst)
    assert [(x.path, x.label, x.line) for x in lines] == [
        ("a b/c d.png", 4, 1),
        ("x.jpg", -1, 3),
    ]
    lst.write_text("ok.png 1\nmissing_label.png\n")
    with pytest.raises(DataError, match=r"l.txt:2: expected `path label`"):
        read_image_list(lst)
    lst.write_text("\n")
    with pytest.raises(DataError, match="File is empty"):
        read_image_list(lst)
