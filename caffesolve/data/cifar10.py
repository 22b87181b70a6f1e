"""CIFAR-10: Caffe's get_cifar10.sh + create_cifar10.sh in one.

The binary version is one tarball, cifar-10-binary.tar.gz, holding
cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin and test_batch.bin.
Each batch is records of 3073 bytes: a label byte (0-9), then a 3x32x32 image,
channel by channel (R, G, B planes), 10000 records to an official batch.

`prepare_cifar10` gets the tarball (a file or folder the user gives, or a
download checked against the published MD5, resumable, with retries), checks
every batch, then writes <out>/cifar10_train_lmdb and cifar10_test_lmdb as
examples/cifar10/convert_cifar_data.cpp does (keys "%05d" of
batch * 10000 + record, Datums channels 3, height 32, width 32, the 3072
image bytes as stored, the label), and <out>/mean.binaryproto as
compute_image_mean writes it from the train database. Every input is read and
checked before anything is written; each output is built in a temporary
place and renamed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from caffesolve.data import db
from caffesolve.data.datasets import Reporter, download_file
from caffesolve.data.idx import verify_checksum
from caffesolve.data.image_mean import compute_image_mean, write_mean
from caffesolve.data.lmdb_source import datum_bytes
from caffesolve.errors import DataError

TARBALL = "cifar-10-binary.tar.gz"
TARBALL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published with the data set
FOLDER = "cifar-10-batches-bin"
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
SIZE = 32  # kCIFARSize
IMAGE_BYTES = 3 * SIZE * SIZE  # kCIFARImageNBytes
RECORD_BYTES = 1 + IMAGE_BYTES
BATCH_SIZE = 10000  # kCIFARBatchSize: records in an official batch, and the key stride
OUTPUTS = ("cifar10_train_lmdb", "cifar10_test_lmdb", "mean.binaryproto")

Batches = dict[str, bytes]


def parse_batch(
    data: bytes, name: str, official: bool
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """A batch file's images (N, 3, 32, 32) and labels (N,), checked: whole
    records, labels 0-9, and (`official`) 10000 records."""
    n, rest = divmod(len(data), RECORD_BYTES)
    if rest or n == 0:
        raise DataError(
            f"{name}: {len(data)} bytes is not a whole number of {RECORD_BYTES}-byte "
            "CIFAR-10 records (truncated or not a CIFAR-10 binary batch)"
        )
    if official and n != BATCH_SIZE:
        raise DataError(
            f"{name}: {n} records, the official batches have {BATCH_SIZE} "
            "(pass --skip-checksum for batches you made yourself)"
        )
    records = np.frombuffer(data, np.uint8).reshape(n, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(
            f"{name}: record {bad[0]} has label {labels[bad[0]]}; CIFAR-10 labels "
            "are 0-9 (a corrupt file, or not the binary version)"
        )
    return records[:, 1:].reshape(n, 3, SIZE, SIZE), labels


def read_tarball(path: Path) -> Batches:
    """The six .bin files of the tarball, by file name."""
    wanted = {*TRAIN_FILES, TEST_FILE}
    found: Batches = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = os.path.basename(member.name)
                if member.isfile() and name in wanted:
                    f = tar.extractfile(member)
                    assert f is not None
                    found[name] = f.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: corrupt or truncated tarball ({e}); get it again"
        ) from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(
            f"{path}: no {', '.join(missing)} in the tarball (is it the binary "
            f"version, {TARBALL}?)"
        )
    return found


def read_folder(folder: Path) -> Batches | None:
    """The six .bin files from `folder` or its cifar-10-batches-bin/, if there."""
    for d in (folder, folder / FOLDER):
        paths = {n: d / n for n in (*TRAIN_FILES, TEST_FILE)}
        if all(p.is_file() for p in paths.values()):
            return {n: p.read_bytes() for n, p in paths.items()}
    return None


def fetch_batches(
    out: Path,
    from_path: Path | None,
    mirrors: Sequence[str] | None,
    verify: bool,
    reporter: Reporter,
    retries: int,
    retry_delay: float,
) -> tuple[Batches, bool]:
    """The six batches and whether they passed the tarball's checksum: from
    `from_path` (a tarball, or a folder with the .bin files or the tarball),
    else the tarball in `out` or downloaded there."""

    def check(p: Path) -> None:
        if verify:
            verify_checksum(p, TARBALL_MD5, None)

    if from_path is not None:
        if from_path.is_dir():
            batches = read_folder(from_path)
            if batches is not None:
                return batches, False
            if not (from_path / TARBALL).is_file():
                raise DataError(
                    f"--from {from_path}: no {TARBALL}, and no "
                    f"{', '.join((*TRAIN_FILES, TEST_FILE))} (there or in {FOLDER}/)"
                )
            from_path = from_path / TARBALL
        if not from_path.is_file():
            raise DataError(f"--from {from_path}: no such file or folder")
        check(from_path)
        return read_tarball(from_path), verify
    out.mkdir(parents=True, exist_ok=True)
    hint = "get it another way and pass it (or its folder) with --from"
    path = download_file(
        TARBALL,
        out,
        list(mirrors or MIRRORS),
        check,
        reporter,
        retries,
        retry_delay,
        hint,
    )
    return read_tarball(path), verify


def cifar_records(
    batches: Sequence[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]],
) -> Iterator[tuple[bytes, bytes]]:
    """(key, Datum) as convert_cifar_data: key "%05d" of file * 10000 + item."""
    for fileid, (images, labels) in enumerate(batches):
        for itemid in range(labels.shape[0]):
            key = f"{fileid * BATCH_SIZE + itemid:05d}".encode()
            yield key, datum_bytes(images[itemid], int(labels[itemid]))


def prepare_cifar10(
    out: str | os.PathLike[str],
    from_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    mirrors: Sequence[str] | None = None,
    verify: bool = True,
    reporter: Reporter | None = None,
    retries: int = 3,
    retry_delay: float = 1.0,
) -> dict[str, Path]:
    """Get CIFAR-10 and write its two LMDBs and mean.binaryproto under `out`;
    `from_dir` may be the tarball itself. Returns the three paths."""
    reporter = reporter or Reporter()
    out_dir = Path(out)
    paths = {name: out_dir / name for name in OUTPUTS}
    db.refuse_existing(*paths.values(), force=force)
    raw, checked = fetch_batches(
        out_dir,
        Path(from_dir) if from_dir is not None else None,
        mirrors,
        verify,
        reporter,
        retries,
        retry_delay,
    )
    official = verify and not checked
    parsed = {n: parse_batch(raw[n], n, official) for n in (*TRAIN_FILES, TEST_FILE)}
    reporter.line("Writing Training data")
    train = [parsed[n] for n in TRAIN_FILES]
    db.build_atomic(
        paths["cifar10_train_lmdb"],
        lambda tmp: db.write_db(tmp, "lmdb", cifar_records(train)),
        force,
    )
    reporter.line("Writing Testing data")
    db.build_atomic(
        paths["cifar10_test_lmdb"],
        lambda tmp: db.write_db(tmp, "lmdb", cifar_records([parsed[TEST_FILE]])),
        force,
    )
    reporter.line("Computing image mean...")
    mean = compute_image_mean(paths["cifar10_train_lmdb"])
    write_mean(paths["mean.binaryproto"], mean, force)
    for c, m in enumerate(mean.channel_means):
        reporter.line(f"mean_value channel [{c}]: {m:.6g}")
    return paths
