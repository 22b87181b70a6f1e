"""IDX files, checksums, downloads (against a local HTTP server on 127.0.0.1)
and the LMDBs written by prepare_dataset, read back Datum by Datum."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np
import pytest
from conftest import MNIST_T10K, varint

from caffesolve.data import datasets as dsm
from caffesolve.data.datasets import Dataset, IdxFile, Reporter, prepare_dataset
from caffesolve.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    parse_idx,
    read_idx,
    read_mnist_pair,
    verify_checksum,
)
from caffesolve.errors import DataError
from caffesolve.proto import caffe_pb2

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# -- tiny synthetic IDX files ------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand: magic 0x0000 08 ndim, big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.astype(np.uint8).tobytes()


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 28, 28)).astype(np.uint8),
        rng.integers(0, 10, n).astype(np.uint8),
    )


TRAIN = tiny_split(5, 1)
TEST = tiny_split(3, 2)


def tiny_files(folder: Path, gz: bool = True) -> dict[str, bytes]:
    """The four IDX files (gzipped or not) in `folder`; returns name -> bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": TRAIN[0],
        "train-labels-idx1-ubyte": TRAIN[1],
        "t10k-images-idx3-ubyte": TEST[0],
        "t10k-labels-idx1-ubyte": TEST[1],
    }
    out = {}
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        data = gzip.compress(raw, mtime=0) if gz else raw
        fname = name + (".gz" if gz else "")
        (folder / fname).write_bytes(data)
        out[fname] = data
    return out


def tiny_dataset(files: dict[str, bytes], mirrors: tuple[str, ...]) -> Dataset:
    """A Dataset whose checksums are those of the tiny files."""

    def entry(name: str) -> IdxFile:
        gz = files[name + ".gz"]
        return IdxFile(
            name,
            hashlib.md5(gz).hexdigest(),
            hashlib.md5(gzip.decompress(gz)).hexdigest(),
        )

    return Dataset(
        name="tiny",
        prefix="tiny",
        files={
            "train_images": entry("train-images-idx3-ubyte"),
            "train_labels": entry("train-labels-idx1-ubyte"),
            "test_images": entry("t10k-images-idx3-ubyte"),
            "test_labels": entry("t10k-labels-idx1-ubyte"),
        },
        mirrors=mirrors,
    )


# -- IDX parsing ---------------------------------------------------------------------


def test_parse_images_and_labels(tmp_path: Path) -> None:
    tiny_files(tmp_path, gz=True)
    images, labels = read_mnist_pair(
        tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    )
    np.testing.assert_array_equal(images, TRAIN[0])
    np.testing.assert_array_equal(labels, TRAIN[1])


def test_plain_and_gz_read_the_same(tmp_path: Path) -> None:
    tiny_files(tmp_path / "gz", gz=True)
    tiny_files(tmp_path / "raw", gz=False)
    a = read_idx(tmp_path / "gz" / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC)
    b = read_idx(tmp_path / "raw" / "t10k-images-idx3-ubyte", IMAGES_MAGIC)
    np.testing.assert_array_equal(a, b)


def test_bad_magic() -> None:
    data = idx_bytes(TRAIN[1])
    with pytest.raises(DataError, match="f.idx: bad magic number 2049, expected 2051"):
        parse_idx(data, "f.idx", IMAGES_MAGIC)
    with pytest.raises(DataError, match="bad magic number"):
        parse_idx(b"\x12\x34\x56\x78" + data[4:], "f.idx", LABELS_MAGIC)


def test_short_read() -> None:
    data = idx_bytes(TRAIN[0])
    with pytest.raises(DataError, match="x.idx: short read: dims 5x28x28 need 3920"):
        parse_idx(data[:-10], "x.idx")
    with pytest.raises(DataError, match="short read"):
        parse_idx(data[:6], "x.idx")
    with pytest.raises(DataError, match="short read"):
        parse_idx(b"\0\0", "x.idx")


def test_trailing_bytes() -> None:
    with pytest.raises(DataError, match="3 bytes after the data"):
        parse_idx(idx_bytes(TRAIN[1]) + b"abc", "y.idx", LABELS_MAGIC)


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(TRAIN[0]))
    (tmp_path / "t.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "t.gz")


def test_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "i").write_bytes(idx_bytes(TRAIN[0]))
    (tmp_path / "l").write_bytes(idx_bytes(TEST[1]))
    with pytest.raises(DataError, match="has 5 images but .* has 3 labels"):
        read_mnist_pair(tmp_path / "i", tmp_path / "l")


# -- checksums -----------------------------------------------------------------------


def test_verify_checksum_gz_raw_and_mismatch(tmp_path: Path) -> None:
    raw = idx_bytes(TEST[1])
    gz = gzip.compress(raw, mtime=0)
    gz_md5, raw_md5 = hashlib.md5(gz).hexdigest(), hashlib.md5(raw).hexdigest()
    (tmp_path / "a.gz").write_bytes(gz)
    (tmp_path / "a").write_bytes(raw)
    # recompressed (other gzip header, same content), like Debian's files
    (tmp_path / "b.gz").write_bytes(gzip.compress(raw, mtime=12345, compresslevel=1))
    for name in ("a.gz", "a", "b.gz"):
        verify_checksum(tmp_path / name, gz_md5, raw_md5)
    (tmp_path / "c").write_bytes(raw[:-1] + b"\x09")
    with pytest.raises(DataError, match="c: checksum mismatch"):
        verify_checksum(tmp_path / "c", gz_md5, raw_md5)


@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason="no shared MNIST t10k files")
def test_official_mnist_checksums_match_the_table() -> None:
    for role in ("test_images", "test_labels", "train_labels"):
        f = dsm.MNIST.files[role]
        path = MNIST_T10K / (f.name + ".gz")
        assert hashlib.md5(path.read_bytes()).hexdigest() == f.gz_md5
        verify_checksum(path, None, f.raw_md5)


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_debian_fashion_files_match_the_table() -> None:
    f = dsm.FASHION_MNIST.files["test_labels"]
    verify_checksum(DEBIAN_FASHION / (f.name + ".gz"), f.gz_md5, f.raw_md5)
    with pytest.raises(DataError):
        verify_checksum(DEBIAN_FASHION / (f.name + ".gz"), f.gz_md5, "0" * 32)


# -- a local HTTP server -------------------------------------------------------------


class Server:
    """Serves `files` under /good/, 404 under /missing/, wrong bytes under
    /corrupt/, and under /flaky/ cuts the first response of each file halfway.
    Honours Range: bytes=N-. Records each request's path and Range header."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                _, kind, name = self.path.split("/", 2)
                if kind == "missing" or name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                if kind == "corrupt":
                    body = body[:-8] + b"garbage!"
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                if start >= len(body):
                    self.send_error(416)
                    return
                part = body[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if kind == "flaky" and name not in server.cut:
                    server.cut.add(name)
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.02,), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, dict[str, bytes]]]:
    files = tiny_files(tmp_path / "src", gz=True)
    server = Server(files)
    yield server, files
    server.close()


def refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/"


def read_lmdb(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


def caffe_datum_bytes(image: np.ndarray, label: int) -> bytes:
    """The wire bytes Caffe's convert_mnist_data writes, assembled by hand:
    channels=1 (field 1), height (2), width (3), data (4, length-delimited),
    label (5), each a tag byte then a varint."""
    h, w = image.shape
    return (
        b"\x08\x01\x10"
        + varint(h)
        + b"\x18"
        + varint(w)
        + b"\x22"
        + varint(h * w)
        + image.tobytes()
        + b"\x28"
        + varint(label)
    )


def check_dbs(
    dbs: dict[str, Path],
    train: tuple[np.ndarray, np.ndarray] = TRAIN,
    test: tuple[np.ndarray, np.ndarray] = TEST,
) -> None:
    """Each database against its IDX source, Datum by Datum."""
    for split, (images, labels) in (("train", train), ("test", test)):
        items = read_lmdb(dbs[split])
        assert [k for k, _ in items] == [
            f"{i:08d}".encode() for i in range(len(labels))
        ]
        for i, (_, value) in enumerate(items):
            d = caffe_pb2.Datum()
            d.ParseFromString(value)
            assert (d.channels, d.height, d.width, d.label) == (1, 28, 28, labels[i])
            assert d.data == images[i].tobytes() and not d.encoded
            assert value == caffe_datum_bytes(images[i], int(labels[i]))


def test_download_skips_failing_mirrors(
    tmp_path: Path, served: tuple[Server, dict[str, bytes]]
) -> None:
    server, files = served
    mirrors = (
        refused_url(),
        server.url + "/missing/",
        server.url + "/corrupt/",
        server.url + "/good/",
    )
    lines: list[str] = []
    reporter = Reporter(None)
    reporter.line = lines.append  # type: ignore[method-assign]
    dbs = prepare_dataset(
        tiny_dataset(files, mirrors), tmp_path / "out", reporter=reporter, retries=0
    )
    check_dbs(dbs)
    for name, data in files.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    text = "\n".join(lines)
    assert "cannot connect" in text and "HTTP 404" in text
    assert "checksum mismatch" in text
    assert not list((tmp_path / "out").glob("*.part"))


def test_download_resumes_with_range(
    tmp_path: Path, served: tuple[Server, dict[str, bytes]]
) -> None:
    server, files = served
    out = tmp_path / "out"
    out.mkdir()
    name = "train-images-idx3-ubyte.gz"
    half = len(files[name]) // 2
    (out / (name + ".part")).write_bytes(files[name][:half])
    ds = tiny_dataset(files, (server.url + "/good/",))
    paths = dsm.fetch_files(ds, out, retries=0)
    assert paths["train_images"].read_bytes() == files[name]
    assert ("/good/" + name, f"bytes={half}-") in server.requests


def test_download_retries_a_cut_connection(
    tmp_path: Path, served: tuple[Server, dict[str, bytes]]
) -> None:
    server, files = served
    ds = tiny_dataset(files, (server.url + "/flaky/",))
    paths = dsm.fetch_files(ds, tmp_path / "out", retries=2, retry_delay=0)
    for role, path in paths.items():
        assert path.read_bytes() == files[ds.files[role].name + ".gz"]
    ranged = [r for p, r in server.requests if r is not None]
    assert len(ranged) == 4  # each file resumed once after the cut


def test_all_mirrors_fail(
    tmp_path: Path, served: tuple[Server, dict[str, bytes]]
) -> None:
    server, files = served
    ds = tiny_dataset(files, (server.url + "/missing/", server.url + "/corrupt/"))
    with pytest.raises(DataError, match="could not download .* --from DIR"):
        prepare_dataset(ds, tmp_path / "out", retries=0)
    assert not (tmp_path / "out" / "tiny_train_lmdb").exists()


def test_already_downloaded_file_is_reused(
    tmp_path: Path, served: tuple[Server, dict[str, bytes]]
) -> None:
    server, files = served
    ds = tiny_dataset(files, (server.url + "/good/",))
    dsm.fetch_files(ds, tmp_path / "out", retries=0)
    n = len(server.requests)
    dsm.fetch_files(ds, tmp_path / "out", retries=0)
    assert len(server.requests) == n


# -- --from, --force, atomic writes --------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_from_dir_writes_caffe_databases(tmp_path: Path, gz: bool) -> None:
    files = tiny_files(tmp_path / "src", gz=gz)
    ds = tiny_dataset(tiny_files(tmp_path / "ref", gz=True), ())
    dbs = prepare_dataset(ds, tmp_path / "out", from_dir=tmp_path / "src")
    assert {p.name for p in dbs.values()} == {"tiny_train_lmdb", "tiny_test_lmdb"}
    check_dbs(dbs)
    assert len(files) == 4
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_from_dir_checksum_mismatch(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src")
    with pytest.raises(DataError, match="checksum mismatch"):
        prepare_dataset(dsm.MNIST, tmp_path / "out", from_dir=tmp_path / "src")
    assert not (tmp_path / "out" / "mnist_train_lmdb").exists()


def test_from_dir_missing_file(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src")
    (tmp_path / "src" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        prepare_dataset(dsm.MNIST, tmp_path / "out", from_dir=tmp_path / "src")


def test_truncated_idx_is_a_clear_error(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src", gz=False)
    p = tmp_path / "src" / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte: short read"):
        prepare_dataset(
            dsm.MNIST, tmp_path / "out", from_dir=tmp_path / "src", verify=False
        )
    assert not (tmp_path / "out" / "mnist_test_lmdb").exists()


def test_never_overwrites_other_sources_without_force(tmp_path: Path) -> None:
    """Same files again: kept as they are. Other files: --force, which
    replaces both."""
    tiny_files(tmp_path / "src")
    kw = dict(from_dir=tmp_path / "src", verify=False)
    dbs = prepare_dataset(dsm.MNIST, tmp_path / "out", **kw)  # type: ignore[arg-type]
    inode = (dbs["train"] / "data.mdb").stat().st_ino
    assert prepare_dataset(dsm.MNIST, tmp_path / "out", **kw) == dbs  # type: ignore[arg-type]
    assert (dbs["train"] / "data.mdb").stat().st_ino == inode
    other = tmp_path / "other"
    tiny_files(other)
    (other / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes((TEST[1] + 1) % 10), mtime=0)
    )
    with pytest.raises(
        DataError, match=r"mnist_test_lmdb: already there, and not built by caffesolve"
    ):
        prepare_dataset(dsm.MNIST, tmp_path / "out", from_dir=other, verify=False)
    assert (dbs["train"] / "data.mdb").stat().st_ino == inode
    dbs = prepare_dataset(dsm.MNIST, tmp_path / "out", force=True, **kw)  # type: ignore[arg-type]
    check_dbs(dbs)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "mnist_test_lmdb",
        "mnist_train_lmdb",
    ]


def test_interrupted_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dsm, "write_datum_lmdb", boom)
    tiny_files(tmp_path / "src")
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            dsm.MNIST, tmp_path / "out", from_dir=tmp_path / "src", verify=False
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_data_layer_reads_what_prepare_wrote(tmp_path: Path) -> None:
    from caffesolve.blob import Blob
    from caffesolve.layers import create_layer
    from caffesolve.proto.io import parse_prototxt_text

    tiny_files(tmp_path / "src")
    dbs = prepare_dataset(
        dsm.MNIST, tmp_path / "out", from_dir=tmp_path / "src", verify=False
    )
    param = parse_prototxt_text(
        f'name: "mnist" type: "Data" top: "data" top: "label" '
        f"transform_param {{ scale: 0.00390625 }} "
        f'data_param {{ source: "{dbs["train"]}" batch_size: 5 backend: LMDB }}',
        caffe_pb2.LayerParameter(),
    )
    lay = create_layer(param)
    top = [Blob(), Blob()]
    lay.setup([], top)
    lay.forward([], top)
    np.testing.assert_array_equal(
        top[0].data[:, 0], TRAIN[0].astype(np.float32) * np.float32(0.00390625)
    )
    np.testing.assert_array_equal(top[1].data, TRAIN[1])
