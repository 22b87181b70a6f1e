"""`caffesolve data ...`: Caffe's data tools (get_mnist.sh + create_mnist.sh,
create_cifar10.sh, convert_imageset, compute_image_mean) and the sine set.
"""

from __future__ import annotations

import functools
from typing import Any

import click

from caffesolve.cli import cli


@cli.group("data")
def data_group() -> None:
    """Caffe's data tools: get data sets and write Caffe's databases.

    \b
    caffesolve data mnist                     # -> data/mnist/mnist_{train,test}_lmdb
    caffesolve data mnist --from ~/Downloads  # the four IDX files, .gz or not
    caffesolve data fashion-mnist             # Debian's package if installed
    caffesolve data cifar10                   # -> data/cifar10/ (LMDBs + mean)
    caffesolve data images list.txt photos/ data/photos_lmdb   # convert_imageset
    caffesolve data mean data/photos_lmdb data/photos_mean.binaryproto
    caffesolve data sine                      # -> data/sine/{train,test}.h5
    """


def _data_options(
    default_out: str,
    out_help: str = "Folder for the IDX files and the two LMDBs.",
    from_help: str = "Use the four IDX files in this folder (.gz or not) "
    "instead of downloading.",
    from_file_okay: bool = False,
    checksum_help: str = "Do not check the files against the published MD5s "
    "(files in the MNIST format that you made yourself).",
) -> Any:
    def wrap(f: Any) -> Any:
        for opt in reversed(
            [
                click.option(
                    "--out",
                    default=default_out,
                    show_default=True,
                    type=click.Path(file_okay=False),
                    help=out_help,
                ),
                click.option(
                    "--from",
                    "from_dir",
                    type=click.Path(exists=True, file_okay=from_file_okay),
                    help=from_help,
                ),
                click.option(
                    "--force",
                    is_flag=True,
                    help="Replace databases built from other files (or not by "
                    "caffesolve); ones from the same files are kept without it.",
                ),
                click.option(
                    "--mirror",
                    "mirrors",
                    multiple=True,
                    metavar="URL|DIR",
                    help="Download from this base URL, or take the files from "
                    "this folder (repeatable; tried in order instead of the "
                    "built-in mirrors).",
                ),
                click.option("--skip-checksum", is_flag=True, help=checksum_help),
            ]
        ):
            f = opt(f)
        return f

    return wrap


def _run_data(
    name: str,
    out: str,
    from_dir: str | None,
    force: bool,
    mirrors: tuple[str, ...],
    skip_checksum: bool,
) -> None:
    """Get data set `name` and write its files; print their paths."""
    from caffesolve.data.cifar10 import prepare_cifar10
    from caffesolve.data.datasets import DATASETS, default_reporter, prepare_dataset

    prepare = (
        prepare_cifar10
        if name == "cifar10"
        else functools.partial(prepare_dataset, DATASETS[name])
    )
    paths = prepare(
        out,
        from_dir,
        force=force,
        mirrors=list(mirrors) or None,
        verify=not skip_checksum,
        reporter=default_reporter(),
    )
    for path in paths.values():
        click.echo(str(path))


@data_group.command("mnist")
@_data_options("data/mnist")
def data_mnist(**options: Any) -> None:
    """MNIST -> OUT/mnist_train_lmdb and OUT/mnist_test_lmdb."""
    _run_data("mnist", **options)


@data_group.command("fashion-mnist")
@_data_options("data/fashion-mnist")
def data_fashion_mnist(**options: Any) -> None:
    """Fashion-MNIST -> OUT/fashion_mnist_{train,test}_lmdb.

    Uses /usr/share/datasets/fashion-mnist/ (Debian's dataset-fashion-mnist
    package) when present, else downloads.
    """
    _run_data("fashion-mnist", **options)


@data_group.command("cifar10")
@_data_options(
    "data/cifar10",
    out_help="Folder for the tarball, the two LMDBs and mean.binaryproto.",
    from_help="Use this cifar-10-binary.tar.gz, or a folder holding it or its "
    "six .bin files, instead of downloading.",
    from_file_okay=True,
    checksum_help="Do not check the tarball against the published MD5, nor "
    "that each batch has 10000 records (files you made yourself).",
)
def data_cifar10(**options: Any) -> None:
    """CIFAR-10 -> OUT/cifar10_{train,test}_lmdb and OUT/mean.binaryproto.

    Caffe's get_cifar10.sh and create_cifar10.sh: the binary version tarball,
    converted as convert_cifar_data does, and the train set's mean as
    compute_image_mean writes it.
    """
    _run_data("cifar10", **options)


_backend_option = click.option(
    "--backend",
    type=click.Choice(["lmdb", "leveldb"]),
    default="lmdb",
    show_default=True,
    help="Database backend (leveldb needs the `leveldb` extra).",
)


@data_group.command("images")
@click.argument("listfile", type=click.Path(exists=True, dir_okay=False))
@click.argument("root")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--resize_height", type=int, default=0, help="Height images are resized to."
)
@click.option(
    "--resize_width", type=int, default=0, help="Width images are resized to."
)
@click.option("--gray", is_flag=True, help="Treat images as grayscale ones.")
@click.option("--shuffle", is_flag=True, help="Randomly shuffle the images.")
@click.option("--seed", type=int, default=None, help="Seed of --shuffle.")
@click.option("--encoded", is_flag=True, help="Store the encoded image in the Datum.")
@click.option(
    "--encode_type",
    default="",
    help="Encode the images as this type ('png', 'jpg', ...); implies --encoded.",
)
@click.option(
    "--check_size", is_flag=True, help="Check that all the Datums have the same size."
)
@_backend_option
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
def data_images(
    listfile: str,
    root: str,
    out: str,
    resize_height: int,
    resize_width: int,
    gray: bool,
    shuffle: bool,
    seed: int | None,
    encoded: bool,
    encode_type: str,
    check_size: bool,
    backend: str,
    force: bool,
) -> None:
    """Caffe's convert_imageset: the images of LISTFILE -> database OUT.

    LISTFILE has one `path label` line per image; ROOT is prepended to each
    path as written (end it with '/'). Keys are %08d_PATH, Datums as
    ReadImageToDatum makes them.
    """
    from caffesolve.data.datasets import default_reporter
    from caffesolve.data.imageset import convert_imageset

    reporter = default_reporter()
    convert_imageset(
        listfile,
        root,
        out,
        resize_height=resize_height,
        resize_width=resize_width,
        gray=gray,
        shuffle=shuffle,
        seed=seed,
        encoded=encoded,
        encode_type=encode_type,
        check_size=check_size,
        backend=backend,
        force=force,
        report=reporter.line,
    )
    click.echo(out)


@data_group.command("mean")
@click.argument("db", type=click.Path(exists=True, file_okay=False))
@click.argument("out", required=False, type=click.Path(dir_okay=False))
@_backend_option
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
def data_mean(db: str, out: str | None, backend: str, force: bool) -> None:
    """Caffe's compute_image_mean: the mean image of DB -> OUT (.binaryproto),
    and the per-channel means."""
    from caffesolve.data.datasets import default_reporter
    from caffesolve.data.db import refuse_existing
    from caffesolve.data.image_mean import compute_image_mean, write_mean

    reporter = default_reporter()
    if out is not None:
        refuse_existing(out, force=force)
    mean = compute_image_mean(db, backend)
    reporter.line(f"Processed {mean.count} files.")
    if out is not None:
        reporter.line(f"Write to {out}")
        write_mean(out, mean, force)
    reporter.line(f"Number of channels: {len(mean.channel_means)}")
    for c, m in enumerate(mean.channel_means):
        reporter.line(f"mean_value channel [{c}]: {m:.6g}")
    if out is not None:
        click.echo(out)


@data_group.command("sine")
@click.option(
    "--out",
    default="data/sine",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for train.h5, test.h5 and their list files.",
)
@click.option("--force", is_flag=True, help="Rebuild existing files.")
@click.option("--seed", default=1701, show_default=True, help="Random seed.")
def data_sine(out: str, force: bool, seed: int) -> None:
    """Noisy sine waves as HDF5 for configs/lstm_sine (an LSTM predicting
    the next value): OUT/train.txt and OUT/test.txt list the .h5 files."""
    from caffesolve.data.sine import write_sine_dataset

    for path in write_sine_dataset(out, force=force, seed=seed):
        click.echo(str(path))
