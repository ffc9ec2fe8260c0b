"""The one spreadsheet writer (CSV and XLSX): every text cell is neutralised against formula injection.

Spreadsheet programs run a cell that starts with `=`, `+`, `-` or `@` as a formula (and some treat
a leading tab or carriage return the same way), so a patient or hospital name such as
`=HYPERLINK(...)` could run when the insurance office opens the file. Every *text* cell that starts
with one of those characters gets a leading apostrophe (`'=HYPERLINK(...)`), the OWASP advice that
Excel and LibreOffice show as plain text. Numbers (Decimal, int) are written as numbers, so a
negative amount stays `-12.50`. CSV consumers that need the original text strip one leading
apostrophe from a text cell that starts with `'` followed by one of those characters.

The rule exists twice, here and nowhere else: `neutralise` for cells in Python and
`neutralise_sql` for queries whose rows are streamed to the file as the database rendered them
(PostgreSQL `COPY ... TO STDOUT`). Rows that pass through Python are checked again (the rule is
idempotent), so a query that forgot the SQL form still yields a safe file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font
from openpyxl.worksheet._write_only import WriteOnlyWorksheet
from sqlalchemy import case, func, literal
from sqlalchemy.sql.elements import ColumnElement

FORMULA_TRIGGERS = frozenset("=+-@\t\r")
UTF8_BOM = b"\xef\xbb\xbf"
XLSX_MAX_ROWS = 1_048_576  # per sheet, header included
MONEY_FORMAT = "0.00"

Cell = str | Decimal | int | date | None


def neutralise_sql(value: ColumnElement[str]) -> ColumnElement[str]:
    """`neutralise` as SQL (PostgreSQL and SQLite); an empty text becomes NULL, as Python writes it."""
    first = func.substr(value, 1, 1)
    return func.nullif(case((first.in_(sorted(FORMULA_TRIGGERS)), literal("'") + value), else_=value), "")


def neutralise(value: str) -> str:
    """The text as a spreadsheet will show it: a leading apostrophe when it could start a formula."""
    if value and value[0] in FORMULA_TRIGGERS:
        return "'" + value
    return value


@dataclass(frozen=True)
class Column:
    """One output column: a stable key (manifest, tests), the title shown, and its kind."""

    key: str
    title: str
    kind: str = "text"  # text (neutralised), money (Decimal), date, int


@dataclass(frozen=True)
class FileInfo:
    """A written file: its name, size, data rows and SHA-256."""

    path: Path
    rows: int
    size: int
    sha256: str

    def as_manifest(self) -> dict[str, Any]:
        """The manifest entry for the file."""
        return {"name": self.path.name, "rows": self.rows, "bytes": self.size, "sha256": self.sha256}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def text_positions(columns: Sequence[Column]) -> tuple[int, ...]:
    """Indexes of the text columns, the ones neutralised."""
    return tuple(i for i, c in enumerate(columns) if c.kind == "text")


def neutralise_row(row: list[Any], texts: tuple[int, ...]) -> list[Any]:
    """Neutralise the row's text cells in place (idempotent) and return it."""
    for i in texts:
        value = row[i]
        if value and value[0] in FORMULA_TRIGGERS:  # text columns hold str or None
            row[i] = "'" + value
    return row


_CSV_SPECIAL = re.compile(r'[,"\r\n]')


def _csv_record(row: Sequence[Any]) -> str:
    """One CSV record as PostgreSQL's COPY writes it: a field is quoted when it holds a comma, a
    quote, a carriage return or a line feed; LF ends the record."""
    fields = []
    for value in row:
        text = "" if value is None else value if isinstance(value, str) else str(value)
        fields.append('"' + text.replace('"', '""') + '"' if _CSV_SPECIAL.search(text) else text)
    return ",".join(fields) + "\n"


class CsvSheet:
    """A CSV file in UTF-8 with a BOM (spreadsheet programs then read Chinese right), one record a line."""

    # Records end with LF, as PostgreSQL's COPY writes them, whichever path produced them; fields
    # are quoted only when they hold a comma, a quote or a line break (the same rule on both paths).

    def __init__(self, path: Path, columns: Sequence[Column]) -> None:
        self.path = path
        self.rows = 0
        self._texts = text_positions(columns)
        self._fh = path.open("wb", buffering=1 << 20)
        self._fh.write(UTF8_BOM)
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        self.extend([[c.title for c in columns]])
        self.rows = 0

    def extend(self, rows: list[list[Any]]) -> None:
        """Write rows of values (their text cells are neutralised in place)."""
        texts = self._texts
        for row in rows:
            neutralise_row(row, texts)
        self._csv.writerows(rows)
        chunk = self._buffer.getvalue()
        if "\r" in chunk:  # Python's csv leaves a lone CR unquoted; COPY (and spreadsheets) need quotes
            chunk = "".join(_csv_record(row) for row in rows)
        self._fh.write(chunk.encode("utf-8"))
        self._buffer.seek(0)
        self._buffer.truncate()
        self.rows += len(rows)

    def write_records(self, records: list[bytes]) -> None:
        """Write records already rendered as CSV lines by a query whose text columns use `neutralise_sql`."""
        self._fh.write(b"".join(records))
        self.rows += len(records)

    def discard(self) -> None:
        """Close and delete a file that will not be completed."""
        self._fh.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> FileInfo:
        """Flush, close, checksum."""
        self._fh.close()
        return FileInfo(self.path, self.rows, self.path.stat().st_size, file_sha256(self.path))


class XlsxBook:
    """An XLSX workbook in openpyxl write-only mode: a summary sheet first, then the detail rows."""

    # Rows go straight to temporary files as they are appended, so memory stays flat; a detail
    # sheet that reaches Excel's row limit continues on a new sheet ("明细 2", ...).

    def __init__(self, path: Path, summary_title: str, details_title: str, columns: Sequence[Column]) -> None:
        self.path = path
        self.rows = 0
        self._book = Workbook(write_only=True)
        self._summary: WriteOnlyWorksheet = self._book.create_sheet(summary_title)
        self._details_title = details_title
        self._columns = list(columns)
        self._texts = text_positions(columns)
        self._money = tuple(i for i, c in enumerate(columns) if c.kind == "money")
        self._sheets = 0
        self._sheet_rows = 0
        self._details: WriteOnlyWorksheet = self._new_details_sheet()

    def _new_details_sheet(self) -> WriteOnlyWorksheet:
        self._sheets += 1
        title = self._details_title if self._sheets == 1 else f"{self._details_title} {self._sheets}"
        sheet: WriteOnlyWorksheet = self._book.create_sheet(title)
        sheet.append(self._header(self._columns, sheet))
        self._sheet_rows = 1
        return sheet

    @staticmethod
    def _header(columns: Sequence[Column], sheet: WriteOnlyWorksheet) -> list[WriteOnlyCell]:
        cells = []
        for column in columns:
            cell = WriteOnlyCell(sheet, value=neutralise(column.title))
            cell.font = Font(bold=True)
            cells.append(cell)
        return cells

    def extend(self, rows: list[list[Any]]) -> None:
        """Write detail rows."""
        for row in rows:
            self.append(row)

    def append(self, row: list[Any]) -> None:
        """Write one detail row (text cells neutralised in place; amounts as numbers, two decimals)."""
        if self._sheet_rows >= XLSX_MAX_ROWS:
            self._details = self._new_details_sheet()
        values = list(neutralise_row(row, self._texts))
        sheet = self._details
        for i in self._money:
            cell = WriteOnlyCell(sheet, value=Decimal(values[i]))
            cell.number_format = MONEY_FORMAT
            values[i] = cell
        sheet.append(values)
        self._sheet_rows += 1
        self.rows += 1

    def write_summary(self, columns: Sequence[Column], rows: Iterable[Sequence[Cell]],
                      preamble: Iterable[Sequence[Cell]] = ()) -> None:
        """Fill the summary sheet: free lines first (title, parameters), then a table."""
        sheet = self._summary
        for line in preamble:
            sheet.append([neutralise(v) if isinstance(v, str) else v for v in line])
        sheet.append([])
        sheet.append(self._header(columns, sheet))
        texts = text_positions(columns)
        money = [i for i, c in enumerate(columns) if c.kind == "money"]
        for row in rows:
            values = neutralise_row(list(row), texts)
            for i in money:
                cell = WriteOnlyCell(sheet, value=values[i])
                cell.number_format = MONEY_FORMAT
                values[i] = cell
            sheet.append(values)

    def discard(self) -> None:
        """Forget a workbook that will not be completed (its temporary sheet files go at exit)."""
        self.path.unlink(missing_ok=True)

    def close(self) -> FileInfo:
        """Save (the workbook streams its temporary sheet files into the archive) and checksum."""
        self._book.save(str(self.path))
        return FileInfo(self.path, self.rows, self.path.stat().st_size, file_sha256(self.path))
