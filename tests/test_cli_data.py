"""`caffesolve data ...` through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli
from test_datasets import TEST, TRAIN, Server, check_dbs, idx_bytes, tiny_files


def test_from_dir_then_up_to_date_then_refuse_then_force(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src", gz=False)
    out = tmp_path / "data" / "mnist"
    args = ["data", "mnist", "--from", str(tmp_path / "src"), "--out", str(out)]
    code, stdout, stderr = run_cli(*args, "--skip-checksum")
    assert code == 0, stderr
    assert stdout.split() == [
        str(out / "mnist_train_lmdb"),
        str(out / "mnist_test_lmdb"),
    ]
    assert f"A total of {len(TRAIN[1])} items. Rows: 28 Cols: 28" in stderr
    check_dbs({"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"})
    inode = (out / "mnist_train_lmdb" / "data.mdb").stat().st_ino
    code, stdout, stderr = run_cli(*args, "--skip-checksum")  # the same files
    assert code == 0, stderr
    assert "are up to date (built from the same files); nothing to do" in stderr
    assert stdout.split() == [
        str(out / "mnist_train_lmdb"),
        str(out / "mnist_test_lmdb"),
    ]
    assert (out / "mnist_train_lmdb" / "data.mdb").stat().st_ino == inode
    (tmp_path / "src" / "t10k-images-idx3-ubyte").write_bytes(  # other files
        idx_bytes(255 - TEST[0])
    )
    code, _, stderr = run_cli(*args, "--skip-checksum")
    assert code == 1
    assert (
        f"Error: {out / 'mnist_test_lmdb'}: already there, and not built by "
        "caffesolve from the files this command uses; pass --force" in stderr
    )
    assert len(stderr.strip().splitlines()) == 1  # one line, no traceback
    code, _, stderr = run_cli(*args, "--skip-checksum", "--force")
    assert code == 0, stderr
    check_dbs(
        {"train": out / "mnist_train_lmdb", "test": out / "mnist_test_lmdb"},
        test=(255 - TEST[0], TEST[1]),
    )


def test_checksums_are_checked_by_default(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src")
    code, _, stderr = run_cli(
        "data", "mnist", "--from", str(tmp_path / "src"), "--out", str(tmp_path / "o")
    )
    assert code == 1
    assert "checksum mismatch" in stderr and "train-images-idx3-ubyte.gz" in stderr


def test_corrupt_idx_is_one_line_error(tmp_path: Path) -> None:
    tiny_files(tmp_path / "src", gz=False)
    p = tmp_path / "src" / "train-labels-idx1-ubyte"
    p.write_bytes(b"\0\0\x08\x03" + p.read_bytes()[4:])  # image magic on labels
    code, _, stderr = run_cli(
        "data",
        "fashion-mnist",
        "--from",
        str(tmp_path / "src"),
        "--out",
        str(tmp_path / "o"),
        "--skip-checksum",
    )
    assert code == 1
    assert "train-labels-idx1-ubyte: bad magic number 2051, expected 2049" in stderr


def test_download_with_mirror_option(tmp_path: Path) -> None:
    files = tiny_files(tmp_path / "src")
    server = Server(files)
    try:
        out = tmp_path / "m"
        code, stdout, stderr = run_cli(
            "data",
            "mnist",
            "--mirror",
            server.url + "/missing/",
            "--mirror",
            server.url + "/good/",
            "--out",
            str(out),
            "--skip-checksum",
        )
    finally:
        server.close()
    assert code == 0, stderr
    dbs = stdout.split()
    assert [Path(p).name for p in dbs] == ["mnist_train_lmdb", "mnist_test_lmdb"]
    assert "HTTP 404" in stderr and "Downloading" in stderr
    check_dbs({"train": Path(dbs[0]), "test": Path(dbs[1])})
    assert sorted(p.name for p in out.glob("*.gz")) == sorted(files)


def test_missing_from_folder_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = run_cli("data", "mnist", "--from", str(tmp_path / "nope"))
    assert code == 2 and "does not exist" in stderr


def test_images_and_mean_commands(tmp_path: Path) -> None:
    from image_helpers import write_images

    paths = write_images(tmp_path / "img", [(4, 6)] * 3)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(paths)))
    db, mean = tmp_path / "db", tmp_path / "mean.binaryproto"
    root = str(tmp_path / "img") + "/"
    code, stdout, stderr = run_cli("data", "images", str(lst), root, str(db), "--gray")
    assert code == 0, stderr
    assert stdout.strip() == str(db)
    assert "A total of 3 images." in stderr and "Processed 3 files." in stderr
    code, _, stderr = run_cli("data", "images", str(lst), root, str(db))
    assert code == 1 and "already exists; pass --force" in stderr
    assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("data", "images", str(lst), root, str(db), "--force",
                          "--backend", "leveldb")  # fmt: skip
    assert code == 0, stderr
    code, stdout, stderr = run_cli(
        "data", "mean", str(db), str(mean), "--backend", "leveldb"
    )
    assert code == 0, stderr
    assert stdout.strip() == str(mean) and mean.is_file()
    assert "Number of channels: 3" in stderr and "mean_value channel [2]: " in stderr
    code, _, stderr = run_cli("data", "mean", str(db), str(mean))  # the default is lmdb
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("data", "mean", str(db), "--backend", "leveldb")
    assert code == 0 and "mean_value channel [0]: " in stderr  # no OUT: print only


def test_sine_writes_hdf5_for_the_lstm_example(tmp_path: Path) -> None:
    """`caffesolve data sine`: train/test .h5 files (rows are time steps) and
    the list files HDF5Data reads; label_t is data_{t+1} within a wave, cont
    is 0 exactly where a wave starts; refused again without --force."""
    import h5py
    import numpy as np

    out = tmp_path / "sine"
    code, stdout, stderr = run_cli("data", "sine", "--out", str(out))
    assert code == 0, stderr
    assert stdout.split() == [str(out / "train.txt"), str(out / "test.txt")]
    assert (out / "train.txt").read_text().split() == ["train.h5"]
    with h5py.File(out / "train.h5", "r") as f:
        data, cont, label = (np.asarray(f[k]) for k in ("data", "cont", "label"))
    assert data.shape == label.shape == (2000, 16, 1) and cont.shape == (2000, 16)
    assert data.dtype == cont.dtype == np.float32
    assert (cont[0] == 0).all() and set(np.unique(cont)) == {0.0, 1.0}
    within = cont[1:] == 1  # step t+1 continues the wave of step t
    np.testing.assert_array_equal(label[:-1, :, 0][within], data[1:, :, 0][within])
    lengths = np.diff(np.flatnonzero(cont[:, 0] == 0))
    assert lengths.min() >= 30 and lengths.max() <= 70
    code, _, stderr = run_cli("data", "sine", "--out", str(out))
    assert code == 1 and "already exists; pass --force" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert run_cli("data", "sine", "--out", str(out), "--force")[0] == 0
