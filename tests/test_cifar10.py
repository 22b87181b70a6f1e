"""`caffesolve data cifar10`: small batches in CIFAR-10's binary format, the
databases convert_cifar_data writes (keys and Datum bytes by hand), the mean,
the download path against a local HTTP server, bad input, and Caffe's
cifar10_quick example training on the result."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import varint
from test_datasets import Server, read_lmdb

from caffesolve.cli import cli
from caffesolve.data import cifar10 as cf
from caffesolve.data.cifar10 import prepare_cifar10
from caffesolve.data.datasets import Reporter
from caffesolve.errors import DataError
from caffesolve.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
F32 = np.float32


def batch_bytes(seed: int, records: int) -> bytes:
    rng = np.random.default_rng(seed)
    recs = rng.integers(0, 256, (records, cf.RECORD_BYTES), dtype=np.uint8)
    recs[:, 0] = rng.integers(0, 10, records)
    return recs.tobytes()


def write_batches(folder: Path, records: int = 4) -> dict[str, bytes]:
    """The six .bin files (records each) in `folder`; returns name -> bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, name in enumerate((*cf.TRAIN_FILES, cf.TEST_FILE)):
        files[name] = batch_bytes(i, records)
        (folder / name).write_bytes(files[name])
    return files


def tarball(files: dict[str, bytes]) -> bytes:
    """cifar-10-binary.tar.gz's layout: cifar-10-batches-bin/<name>."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{cf.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def caffe_cifar_datum(record: bytes) -> bytes:
    """convert_cifar_data's Datum: channels 3, height 32, width 32, data (the
    3072 image bytes as stored), label (the record's first byte)."""
    return (
        b"\x08\x03\x10\x20\x18\x20\x22" + varint(3072) + record[1:]
        + b"\x28" + varint(record[0])
    )  # fmt: skip


def check_databases(out: Path, files: dict[str, bytes], records: int) -> None:
    n = cf.RECORD_BYTES
    train = read_lmdb(out / "cifar10_train_lmdb")
    want = [
        (
            f"{b * 10000 + i:05d}".encode(),
            caffe_cifar_datum(files[name][i * n : (i + 1) * n]),
        )
        for b, name in enumerate(cf.TRAIN_FILES)
        for i in range(records)
    ]
    assert train == want
    test = read_lmdb(out / "cifar10_test_lmdb")
    assert test == [
        (
            f"{i:05d}".encode(),
            caffe_cifar_datum(files[cf.TEST_FILE][i * n : (i + 1) * n]),
        )
        for i in range(records)
    ]
    # the mean of the train images, a float32 running sum in key order
    images = [
        np.frombuffer(files[name], np.uint8).reshape(records, n)[:, 1:]
        for name in cf.TRAIN_FILES
    ]
    acc = np.zeros(3072, F32)
    for im in np.concatenate(images):
        acc = (acc + im.astype(F32)).astype(F32)
    blob = caffe_pb2.BlobProto.FromString((out / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 32, 32)
    np.testing.assert_array_equal(np.asarray(blob.data, F32), acc / F32(5 * records))


def test_from_tarball_folder_and_bins(tmp_path: Path) -> None:
    files = write_batches(tmp_path / "bins", records=3)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / cf.TARBALL).write_bytes(tarball(files))
    for i, src in enumerate(
        (tmp_path / "bins", tmp_path / "t", tmp_path / "t" / cf.TARBALL)
    ):
        out = tmp_path / f"out{i}"
        paths = prepare_cifar10(out, src, verify=False)
        assert list(paths) == list(cf.OUTPUTS)
        check_databases(out, files, 3)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_checksum_and_official_size_are_checked(tmp_path: Path) -> None:
    files = write_batches(tmp_path / "bins")
    (tmp_path / cf.TARBALL).write_bytes(tarball(files))
    with pytest.raises(DataError, match="checksum mismatch.*--skip-checksum"):
        prepare_cifar10(tmp_path / "o", tmp_path / cf.TARBALL)
    with pytest.raises(DataError, match="data_batch_1.bin: 4 records, the official"):
        prepare_cifar10(tmp_path / "o", tmp_path / "bins")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("damage", ["truncated bin", "bad label", "truncated tar"])
def test_corrupt_input_is_one_error_and_nothing_left(
    tmp_path: Path, damage: str
) -> None:
    files = write_batches(tmp_path / "bins")
    src = tmp_path / "bins"
    if damage == "truncated bin":
        (src / "test_batch.bin").write_bytes(files["test_batch.bin"][:-100])
        match = "test_batch.bin: .* not a whole number of 3073-byte"
    elif damage == "bad label":
        bad = bytearray(files["data_batch_3.bin"])
        bad[cf.RECORD_BYTES] = 10
        (src / "data_batch_3.bin").write_bytes(bytes(bad))
        match = "data_batch_3.bin: record 1 has label 10"
    else:
        data = tarball(files)
        src = tmp_path / cf.TARBALL
        src.write_bytes(data[: len(data) // 2])
        match = "corrupt or truncated tarball"
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match) as e:
        prepare_cifar10(out, src, verify=False)
    assert "\n" not in str(e.value)
    assert not out.exists() or list(out.iterdir()) == []


def test_download_from_mirrors_with_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_batches(tmp_path / "bins")
    data = tarball(files)
    monkeypatch.setattr(cf, "TARBALL_MD5", hashlib.md5(data).hexdigest())
    server = Server({cf.TARBALL: data})
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / (cf.TARBALL + ".part")).write_bytes(data[:100])  # an earlier try
        mirrors = [server.url + f"/{k}/" for k in ("missing", "corrupt", "good")]
        lines: list[str] = []
        reporter = Reporter(None)
        reporter.line = lines.append  # type: ignore[method-assign]
        prepare_cifar10(out, mirrors=mirrors, reporter=reporter, retries=0)
        check_databases(out, files, 4)
        assert (out / cf.TARBALL).read_bytes() == data  # kept for the next run
        text = "\n".join(lines)
        assert "HTTP 404" in text and "checksum mismatch" in text
        name = cf.TARBALL
        # the .part resumed on the corrupt mirror, then fetched whole
        assert ("/corrupt/" + name, "bytes=100-") in server.requests
        assert ("/good/" + name, None) in server.requests
        n = len(server.requests)
        prepare_cifar10(out, mirrors=mirrors, reporter=reporter, force=True)
        assert len(server.requests) == n  # the tarball there is reused
    finally:
        server.close()


def test_refuses_to_overwrite_then_force(tmp_path: Path) -> None:
    write_batches(tmp_path / "bins")
    prepare_cifar10(tmp_path / "out", tmp_path / "bins", verify=False)
    with pytest.raises(DataError, match="already exist; pass --force"):
        prepare_cifar10(tmp_path / "out", tmp_path / "bins", verify=False)
    prepare_cifar10(tmp_path / "out", tmp_path / "bins", verify=False, force=True)


def test_cli_then_cifar10_quick_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's CIFAR-10 quickstart on a small tarball: `caffesolve data
    cifar10 --from DIR`, then Caffe's cifar10_quick for a few iterations."""
    files = write_batches(tmp_path / "dl", records=30)
    for name in files:
        (tmp_path / "dl" / name).unlink()
    (tmp_path / "dl" / cf.TARBALL).write_bytes(tarball(files))
    work = tmp_path / "repo"
    (work / "configs" / "cifar10").mkdir(parents=True)
    for p in (ROOT / "configs" / "cifar10").glob("cifar10_quick*.prototxt"):
        (work / "configs" / "cifar10" / p.name).write_text(p.read_text())
    monkeypatch.chdir(work)
    runner = CliRunner()
    r = runner.invoke(cli, ["data", "cifar10", "--from", str(tmp_path / "dl"),
                            "--skip-checksum"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [f"data/cifar10/{n}" for n in cf.OUTPUTS]
    assert "mean_value channel [2]:" in r.stderr
    r = runner.invoke(cli, ["train", "configs/cifar10/cifar10_quick_solver.prototxt",
                            "--iterations", "4", "--set", "test_iter=1",
                            "--set", "display=1"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "Iteration 4, loss = " in r.stderr
    assert "Test net output #0: accuracy = " in r.stderr
    assert (work / "data" / "cifar10" / "cifar10_quick_iter_4.caffemodel").is_file()
    r = runner.invoke(cli, ["data", "cifar10", "--from", str(tmp_path / "dl")])
    assert r.exit_code == 1 and "already exist; pass --force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
