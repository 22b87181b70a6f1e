"""Image lists and Caffe's convert_imageset (tools/convert_imageset.cpp).

A list file has one image a line, `path label`: the path is everything before
the line's last space (so it may hold spaces), the label the integer after it.
The path is appended to the root folder as written (Caffe joins the strings
with no '/'). ImageData reads the same lists.

`convert_imageset` writes one Datum per line, keys `%08d_` + path (the line
number after any shuffle), as ReadImageToDatum makes them: raw pixels
(channels, height, width, CHW bytes in BGR order, label, encoded: false), or
with `encoded` the image file's own bytes when it needs no resizing and is
already in the asked encoding, else the image re-encoded (label, encoded: true).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffesolve.data.db import build_atomic, refuse_existing, write_db
from caffesolve.data.image import (
    decode_image,
    encode_image,
    file_extension,
    hwc_to_chw,
    read_image,
)
from caffesolve.errors import DataError
from caffesolve.proto import caffe_pb2

_LABEL = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class ImageLine:
    path: str
    label: int
    line: int  # 1-based line number in the list file


def read_image_list(source: str | os.PathLike[str], where: str = "") -> list[ImageLine]:
    """The (path, label) lines of a list file; blank lines are skipped."""
    prefix = f"{where}: " if where else ""
    try:
        text = Path(source).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{prefix}cannot read image list {source} ({e})") from None
    lines = []
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        path, space, label = line.rpartition(" ")
        if not space or not path or not _LABEL.fullmatch(label.strip()):
            raise DataError(
                f"{prefix}{source}:{n}: expected `path label` (the label an "
                f"integer after the last space), got {line!r}"
            )
        lines.append(ImageLine(path, int(label), n))
    if not lines:
        raise DataError(f"{prefix}{source}: File is empty (no `path label` lines)")
    return lines


def image_path(root: str, line: ImageLine, source: str | os.PathLike[str]) -> str:
    """root + path, as Caffe joins them; a missing file is a DataError naming
    the list line (and a root folder that lacks its final '/')."""
    filename = root + line.path
    if not os.path.isfile(filename):
        hint = ""
        if root and not root.endswith("/") and os.path.isfile(root + "/" + line.path):
            hint = f"; the root folder is prepended as written: use '{root}/'"
        raise DataError(
            f"{source}:{line.line}: Could not open or find file {filename}{hint}"
        )
    return filename


def match_ext(filename: str, encoding: str) -> bool:
    """Caffe's matchExt: the file's extension is the encoding (jpg = jpeg)."""
    ext, enc = file_extension(filename), encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def image_to_datum(
    filename: str,
    label: int,
    height: int = 0,
    width: int = 0,
    is_color: bool = True,
    encoding: str = "",
) -> caffe_pb2.Datum:
    """Caffe's ReadImageToDatum (io.cpp)."""
    img = read_image(filename, height, width, is_color)
    d = caffe_pb2.Datum()
    if encoding:
        if not height and not width and match_ext(filename, encoding):
            with open(filename, "rb") as f:  # ReadFileToDatum
                d.data = f.read()
        else:
            d.data = encode_image(img, encoding, filename)
        d.label = label
        d.encoded = True
        return d
    # CVMatToDatum, then the label
    d.channels, d.height, d.width = img.shape[2], img.shape[0], img.shape[1]
    d.encoded = False
    d.data = hwc_to_chw(img).tobytes()
    d.label = label
    return d


def convert_imageset(
    list_file: str | os.PathLike[str],
    root: str,
    out: str | os.PathLike[str],
    resize_height: int = 0,
    resize_width: int = 0,
    gray: bool = False,
    shuffle: bool = False,
    seed: int | None = None,
    encoded: bool = False,
    encode_type: str = "",
    check_size: bool = False,
    backend: str = "lmdb",
    force: bool = False,
    report: Callable[[str], None] | None = None,
) -> int:
    """Write the images of `list_file` to a new database `out`; returns the
    count. Built in a temporary folder and renamed (db.build_atomic): an
    unreadable image or a size mismatch leaves nothing behind."""
    say = report or (lambda message: None)
    refuse_existing(out, force=force)
    lines = read_image_list(list_file)
    if shuffle:
        say("Shuffling data")
        order = np.random.default_rng(seed).permutation(len(lines))
        lines = [lines[i] for i in order]
    say(f"A total of {len(lines)} images.")
    if encode_type and not encoded:
        say("encode_type specified, assuming encoded=true.")
    height, width = max(0, resize_height), max(0, resize_width)
    count = 0

    def records() -> Iterator[tuple[bytes, bytes]]:
        nonlocal count
        size: tuple[int, ...] | None = None
        for line_id, line in enumerate(lines):
            filename = image_path(root, line, list_file)
            enc = encode_type
            if encoded and not enc:
                enc = file_extension(line.path)
                if not enc:
                    raise DataError(
                        f"{list_file}:{line.line}: Failed to guess the encoding "
                        f"of '{line.path}'; pass --encode_type"
                    )
            datum = image_to_datum(
                filename, line.label, height, width, not gray, enc.lower()
            )
            if check_size:
                shape = _datum_shape(datum, filename)
                if size is None:
                    size = shape
                elif shape != size:
                    raise DataError(
                        f"{list_file}:{line.line}: {filename} is "
                        f"{'x'.join(map(str, shape))}, the first image is "
                        f"{'x'.join(map(str, size))} (--check_size); resize "
                        "with --resize_height and --resize_width"
                    )
            key = f"{line_id:08d}_{line.path}".encode()
            yield key, datum.SerializeToString()
            count += 1
            if count % 1000 == 0:
                say(f"Processed {count} files.")

    build_atomic(out, lambda tmp: write_db(tmp, backend, records()), force)
    if count % 1000:
        say(f"Processed {count} files.")
    return count


def _datum_shape(datum: caffe_pb2.Datum, filename: str) -> tuple[int, ...]:
    """(C, H, W) of a Datum, decoding an encoded one."""
    if not datum.encoded:
        return (datum.channels, datum.height, datum.width)
    return tuple(hwc_to_chw(decode_image(datum.data, "unchanged", filename)).shape)
