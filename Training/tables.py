"""Cohort tables as published: CSV or Excel workbooks (openpyxl), read as rows of stripped strings.

Published workbooks often carry group titles or descriptions above the column names (Duke's
``Clinical_and_Other_Features.xlsx`` has a row of groups before the names): the header is the first row,
among the first :data:`HEADER_SEARCH_ROWS`, that holds the table's key column; rows above it are skipped,
rows below it that repeat no key (descriptions, units, empty lines) are dropped. Column names match without
regard to case or surrounding spaces.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.errors import InputError

HEADER_SEARCH_ROWS = 5
EXCEL_SUFFIXES = (".xlsx", ".xlsm")


def _norm(name: str) -> str:
    return " ".join(str(name).split()).lower()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _grid(path: Path, sheet: str | None) -> list[list[str]]:
    """Every row of the CSV, or of ``sheet`` (default: the first) of a workbook, as stripped strings."""
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.suffix.lower() in EXCEL_SUFFIXES:
        try:
            import openpyxl
        except ImportError:
            raise InputError(path, "reading .xlsx needs openpyxl (pip install openpyxl), or save it as CSV") from None
        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(path, f"cannot be read as a workbook ({type(err).__name__}: {err})") from None
        if sheet is not None and sheet not in book.sheetnames:
            if len(book.sheetnames) != 1:
                raise InputError(path, f"no sheet {sheet!r} (sheets: {', '.join(book.sheetnames)})")
            sheet = None
        ws = book[sheet] if sheet is not None else book.worksheets[0]
        rows = [[_cell(v) for v in row] for row in ws.iter_rows(values_only=True)]
        book.close()
        return rows
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [[v.strip() for v in row] for row in csv.reader(f)]


@dataclass
class Table:
    """A read table: its file, column names as published, and its rows (column name -> value)."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]

    def column(self, *names: str, required: bool = True) -> str | None:
        """The published name of the first of ``names`` the table has (case- and space-insensitive); a missing
        required column is an :class:`InputError` naming the file and the names looked for."""
        by_norm = {_norm(c): c for c in self.columns}
        for name in names:
            if _norm(name) in by_norm:
                return by_norm[_norm(name)]
        if required:
            raise InputError(self.path, f"no column {' or '.join(repr(n) for n in names)}")
        return None


def read_table(path: str | Path, key: tuple[str, ...] | str, sheet: str | None = None) -> Table:
    """The table in ``path`` whose header row holds one of the ``key`` column names (see the module)."""
    path = Path(path)
    keys = (key,) if isinstance(key, str) else key
    grid = _grid(path, sheet)
    wanted = {_norm(k) for k in keys}
    for h, row in enumerate(grid[:HEADER_SEARCH_ROWS]):
        names = [_norm(v) for v in row]
        hit = next((i for i, n in enumerate(names) if n in wanted), None)
        if hit is None:
            continue
        columns = [v if v else f"column {i + 1}" for i, v in enumerate(row)]
        body = [dict(zip(columns, r, strict=False)) for r in grid[h + 1:] if len(r) > hit and r[hit]]
        return Table(path, columns, body)
    raise InputError(path, f"no header row with a column {' or '.join(repr(k) for k in keys)} in the first "
                     f"{HEADER_SEARCH_ROWS} rows")
