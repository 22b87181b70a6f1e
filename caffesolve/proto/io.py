"""Reading and writing Caffe's protobuf files.

Text files (prototxt) parse with google.protobuf.text_format; a syntax error
becomes a ConfigError that keeps ParseError's line:col and, for a misspelt
field, suggests the closest real field name. Binary files (.caffemodel,
.binaryproto, .solverstate) parse with ParseFromString. Writes are atomic
(caffesolve.files: a temporary beside the target, fsync, rename, folder sync).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TypeVar

from google.protobuf import descriptor_pool, text_format
from google.protobuf.message import DecodeError, Message

from caffesolve.errors import ConfigError
from caffesolve.files import atomic_write, atomic_write_bytes  # noqa: F401 (re-exported)
from caffesolve.proto import caffe_pb2  # noqa: F401  (registers the caffe types)

M = TypeVar("M", bound=Message)

_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_NO_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\w+)')


def suggest(name: str, candidates: list[str]) -> str:
    """' (did you mean `x`?)' for the closest candidate, or '' if none is close."""
    best = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not best:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            best = [lowered[name.lower()]]
    return f" (did you mean `{best[0]}`?)" if best else ""


def _explain(error: text_format.ParseError) -> str:
    """ParseError's text without its own line:col prefix, plus a suggestion."""
    text = re.sub(r"^\d+:\d+ : ", "", str(error))
    pool = descriptor_pool.Default()
    m = _NO_FIELD.search(text)
    if m:
        names = [f.name for f in pool.FindMessageTypeByName(m.group(1)).fields]
        return f"{m.group(1)} has no field named `{m.group(2)}`" + suggest(
            m.group(2), names
        )
    m = _NO_ENUM.search(text)
    if m:
        values = [v.name for v in pool.FindEnumTypeByName(m.group(1)).values]
        return (
            f"{m.group(1)} has no value named {m.group(2)} (valid: {', '.join(values)})"
        )
    return text


def parse_prototxt_text(text: str, message: M, source: str = "<string>") -> M:
    """Merge text-format `text` into `message`; errors name source:line:col."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        where = source
        if e.GetLine() is not None:
            where += f":{e.GetLine()}:{e.GetColumn()}"
        raise ConfigError(f"{where}: {_explain(e)}") from None
    return message


def read_prototxt(path: str | os.PathLike[str], message: M) -> M:
    """Read the text-format file at `path` into `message` and return it."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read ({e})") from None
    return parse_prototxt_text(text, message, str(p))


def read_binaryproto(path: str | os.PathLike[str], message: M) -> M:
    """Read the binary protobuf file at `path` into `message` and return it."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e})") from None
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise ConfigError(
            f"{p}: not a binary {message.DESCRIPTOR.name} file ({e})"
        ) from None
    return message


def write_binaryproto(path: str | os.PathLike[str], message: Message) -> None:
    """Serialize `message` to `path` atomically."""
    atomic_write_bytes(path, message.SerializeToString())


def write_prototxt(path: str | os.PathLike[str], message: Message) -> None:
    """Write `message` as text format to `path` atomically."""
    atomic_write_bytes(path, text_format.MessageToString(message).encode())
