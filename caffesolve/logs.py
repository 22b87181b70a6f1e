"""A Caffe training log (Caffe's or caffesolve's) as train and test tables.

What Caffe's tools/extra/parse_log.py does, in Python 3: one row per display
iteration (train) and per test pass (test), columns NumIters, Seconds (since
the "Solving" line), LearningRate, then every net output by name, in the
order they first appear. Lines are read with the glog format and the message
words of log.py, the texts caffesolve writes them with.

Differences from parse_log.py (decisions of ours): LearningRate is the rate
logged for the row's own iteration ("Iteration N, lr = X"), where
parse_log.py gives the rate printed before the row (one display interval
late); NumIters is an integer; an output name seen twice at one iteration
(two test nets) starts a second row; a log without a "Solving" line counts
seconds from its first line; a value such as nan or inf is kept.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from caffesolve.errors import DataError
from caffesolve.log import GLOG_LINE, ITERATION, LR, SOLVING, TEST_OUTPUT, TRAIN_OUTPUT

_NUMBER = r"([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|inf|nan))"
_ITERATION = re.compile(re.escape(ITERATION) + r"(\d+)")
_LR = re.compile(re.escape(LR) + _NUMBER)
_OUTPUT = {
    kind: re.compile(re.escape(words) + r"(\d+): (\S+) = " + _NUMBER)
    for kind, words in (("train", TRAIN_OUTPUT), ("test", TEST_OUTPUT))
}
FIXED_COLUMNS = ("NumIters", "Seconds", "LearningRate")


@dataclass
class Table:
    """Rows of one kind (train or test); `columns` in order."""

    rows: list[dict[str, float]] = field(default_factory=list)
    columns: list[str] = field(default_factory=lambda: list(FIXED_COLUMNS))

    def column(self, name: str) -> list[float]:
        return [r.get(name, math.nan) for r in self.rows]

    def outputs(self) -> list[str]:
        return self.columns[len(FIXED_COLUMNS) :]


@dataclass
class ParsedLog:
    train: Table
    test: Table


def _line_time(match: re.Match[str], year: int) -> dt.datetime:
    month, day, hour, minute, second, micro = (int(match.group(i)) for i in range(2, 8))
    return dt.datetime(year, month, day, hour, minute, second, micro)


def parse_lines(lines: Iterable[str], year: int) -> ParsedLog:
    """The tables of a log's lines; `year` is the year of its first line
    (glog prints none); a month going backwards starts the next year."""
    entries: list[tuple[dt.datetime, str]] = []
    last_month = 0
    for line in lines:
        m = GLOG_LINE.match(line.rstrip("\n"))
        if not m:
            continue  # a prototxt dump or other text between glog lines
        if int(m.group(2)) < last_month:
            year += 1
        last_month = int(m.group(2))
        entries.append((_line_time(m, year), m.group(10)))
    start = next((t for t, msg in entries if SOLVING in msg), None)
    if start is None and entries:
        start = entries[0][0]

    tables = {"train": Table(), "test": Table()}
    current: dict[str, dict[str, float] | None] = {"train": None, "test": None}
    lr_at: dict[int, float] = {}
    iteration: int | None = None
    for when, msg in entries:
        m = _ITERATION.search(msg)
        if m:
            iteration = int(m.group(1))
        if iteration is None:
            continue
        m = _LR.search(msg)
        if m:
            lr_at[iteration] = float(m.group(1))
        for kind, pattern in _OUTPUT.items():
            m = pattern.search(msg)
            if not m:
                continue
            name, value = m.group(2), float(m.group(3))
            row = current[kind]
            if row is None or row["NumIters"] != iteration or name in row:
                assert start is not None
                row = {
                    "NumIters": iteration,
                    "Seconds": (when - start).total_seconds(),
                }
                current[kind] = row
                tables[kind].rows.append(row)
            row[name] = value
            if name not in tables[kind].columns:
                tables[kind].columns.append(name)
    for table in tables.values():
        for row in table.rows:
            row["LearningRate"] = _rate_at(lr_at, int(row["NumIters"]))
    return ParsedLog(tables["train"], tables["test"])


def _rate_at(lr_at: dict[int, float], it: int) -> float:
    """The rate logged for iteration `it`, else for the last iteration
    before it, else the first one logged (NaN if none was)."""
    if it in lr_at:
        return lr_at[it]
    before = [i for i in lr_at if i <= it]
    if before:
        return lr_at[max(before)]
    return lr_at[min(lr_at)] if lr_at else math.nan


def parse_log(path: str | os.PathLike[str]) -> ParsedLog:
    """The tables of a log file; the year comes from the file's time, as in
    Caffe's extract_seconds.py."""
    p = Path(path)
    try:
        year = dt.datetime.fromtimestamp(p.stat().st_mtime).year
        with open(p, encoding="utf-8", errors="replace") as f:
            parsed = parse_lines(f, year)
    except OSError as e:
        raise DataError(f"{path}: cannot read the log ({e.strerror})") from None
    if not parsed.train.rows and not parsed.test.rows:
        raise DataError(
            f"{path}: no training or test outputs found (expected Caffe's glog "
            f"lines such as '... {ITERATION}100 ...' and '{TRAIN_OUTPUT}0: loss = ...')"
        )
    return parsed


def _cell(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def write_csv(table: Table, path: str | os.PathLike[str]) -> None:
    """The table as CSV with a header row (empty cells for missing outputs)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow([_cell(row[c]) if c in row else "" for c in table.columns])


def write_tables(
    log_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """LOG.train and LOG.test (parse_log.py's names) in `out_dir` (default:
    the log's folder); a table without rows is not written. The paths written."""
    parsed = parse_log(log_path)
    folder = Path(out_dir) if out_dir is not None else Path(log_path).parent
    written = []
    for suffix, table in ((".train", parsed.train), (".test", parsed.test)):
        if table.rows:
            path = folder / (Path(log_path).name + suffix)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                write_csv(table, path)
            except OSError as e:
                raise DataError(
                    f"{path}: cannot write the table ({e.strerror})"
                ) from None
            written.append(path)
    return written
