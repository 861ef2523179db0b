"""Reading a user's data files: numeric CSV columns and NPZ arrays, refused with one line that
names the file, the column and the line when they cannot be used.

Every function here reads and never writes. A problem raises :class:`DataFileError` (a
``ValueError``), whose message is meant to be printed as it is: ``seqjax train`` prints it and
exits with status 2.
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
import zipfile
from typing import NamedTuple

import numpy as np

# Column names taken as the time stamp of a row: kept as labels, never used as a number.
DATE_COLUMNS = ("date", "time", "timestamp", "datetime", "ds", "month", "year", "week", "day")


class DataFileError(ValueError):
    """A data file that cannot be used as asked: missing, malformed, or with values that are
    not what a model can train on. The message says where and what to do."""


class Table(NamedTuple):
    """A CSV file's text cells: ``header`` (column names) and ``rows`` (one list of cells per
    data line); ``lines[i]`` is the file's line number of ``rows[i]`` (the header is line 1)."""

    path: pathlib.Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def column(self, name: str, option: str = "column") -> np.ndarray:
        """The float64 values of column ``name``; refuses a missing column, a cell that is not a
        number, and a missing or NaN value, naming the line."""
        if name not in self.header:
            raise DataFileError(
                f"{self.path}: no column {name!r} ({option}); the header has "
                f"{', '.join(map(repr, self.header))}"
            )
        j = self.header.index(name)
        values = np.empty(len(self.rows))
        missing = []
        for i, row in enumerate(self.rows):
            cell = row[j].strip()
            try:
                values[i] = float(cell) if cell else math.nan
            except ValueError:
                raise DataFileError(
                    f"{self.path}: line {self.lines[i]}, column {name!r}: {cell!r} is not a number"
                ) from None
            if not math.isfinite(values[i]):
                missing.append(self.lines[i])
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataFileError(
                f"{self.path}: column {name!r} has a missing, NaN or infinite value at line "
                f"{missing[0]}{more}; fill or drop those rows first"
            )
        return values

    def text_column(self, name: str) -> list[str]:
        """Column ``name``'s cells as they are written (ids, labels, dates)."""
        if name not in self.header:
            raise DataFileError(
                f"{self.path}: no column {name!r}; the header has "
                f"{', '.join(map(repr, self.header))}"
            )
        j = self.header.index(name)
        return [row[j].strip() for row in self.rows]

    def date_column(self) -> str | None:
        """The first column whose name says it holds time stamps (see ``DATE_COLUMNS``)."""
        return next((n for n in self.header if n.strip().lower() in DATE_COLUMNS), None)


def _existing(path: str | os.PathLike, option: str) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.exists():
        raise DataFileError(f"{option} {str(path)!r}: no such file")
    if not path.is_file():
        raise DataFileError(f"{option} {str(path)!r} is not a file")
    return path


def read_csv(path: str | os.PathLike, option: str = "--data") -> Table:
    """The cells of a CSV file with a header row; blank lines are skipped. Refuses a file that
    is not UTF-8 text, has no header or no data rows, repeats a column name, or has a row with
    another number of cells than the header."""
    path = _existing(path, option)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows, lines, header = [], [], None
    reader = csv.reader(text.splitlines())
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            continue
        if len(row) != len(header):
            raise DataFileError(
                f"{path}: line {reader.line_num} has {len(row)} cells, the header "
                f"{len(header)}; every row needs one cell per column"
            )
        rows.append(row)
        lines.append(reader.line_num)
    if header is None or not rows:
        raise DataFileError(f"{path}: no data rows (expected a header row, then one row per time "
                            "step or observation)")  # fmt: skip
    repeated = sorted({n for n in header if header.count(n) > 1})
    if repeated:
        raise DataFileError(f"{path}: the header repeats {', '.join(map(repr, repeated))}")
    return Table(path, header, rows, lines)


def read_npz(path: str | os.PathLike, option: str = "--data") -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read without unpickling (an object array is refused)."""
    path = _existing(path, option)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as err:  # an object array: numpy would need pickle to read it
        raise DataFileError(f"{path}: {err}; save plain numeric arrays") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataFileError(f"{path}: not a readable .npz file ({err})") from None


def split_bounds(n: int, fractions: tuple[float, float] = (0.7, 0.15)) -> tuple[int, int]:
    """``(train_end, validation_end)``: the first 70% of ``n`` items train, the next 15%
    validate, the rest test (the defaults)."""
    train_end = round(n * fractions[0])
    return train_end, train_end + round(n * fractions[1])
