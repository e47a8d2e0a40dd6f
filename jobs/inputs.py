"""Streaming input readers: CSV, JSON Lines, or one id per line.

Rows come out one at a time with the line they started on, so memory stays
flat whatever the file's size. A problem with the file itself (not UTF-8, a
missing column, a line over the size limit) raises `InputError` with one
clear message; a problem with one row is that row's own, reported with it.

Values pass through as written, spaces and all: a name is not ours to edit,
and an id is what the target's rules say it is (they refuse ` bob` where the
vendor would). Only column names are trimmed and lower-cased, and a row of
nothing but whitespace counts as blank.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

MAX_LINE_BYTES = 1 << 20  # no legitimate row is near 1 MiB; a 10 MB line is a broken file

USER_ID_COLUMNS = ("user_id", "userid", "id", "uid", "accid", "username", "user")
NAME_COLUMNS = ("name", "nickname", "nick_name", "username_display", "display_name")
AVATAR_COLUMNS = ("avatar", "portraituri", "portrait", "icon", "faceurl", "avatar_url")


class InputError(Exception):
    """The input file as a whole cannot be read; nothing should be created."""


@dataclass
class Row:
    line: int  # where the row starts in the file (1-based)
    fields: dict[str, str] = field(default_factory=dict)  # column names lower-cased
    problem: str | None = None  # set when this row alone could not be read
    mark: Any = None  # a listing's page end: where to carry on after this row (jobs/listing.py)


def read_rows(path: str | Path, *, key_columns: Sequence[str] = USER_ID_COLUMNS) -> Iterator[Row]:
    """Rows of a .csv, .jsonl/.ndjson or .txt (one id per line) file.
    The first present column of `key_columns` is renamed "key"."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    with path.open("rb") as raw:
        lines = _checked_lines(raw, path)
        if suffix == ".csv":
            yield from _csv_rows(lines, path, key_columns)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            yield from _jsonl_rows(enumerate(lines, 1), key_columns)
        elif suffix in (".txt", ".ids", ""):
            for number, text in enumerate(lines, 1):
                if text.strip():
                    yield _checked(Row(number, {"key": text.rstrip("\n").removesuffix("\r")}))
        else:
            raise InputError(f"{path}: unknown input format {suffix!r} (use .csv, .jsonl or .txt)")


def _checked_lines(raw: IO[bytes], path: Path) -> Iterator[str]:
    """The file's lines, with the size limit and UTF-8 enforced."""
    number = 0
    while True:
        chunk = raw.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > MAX_LINE_BYTES:
            raise InputError(f"{path}: line {number} is longer than {MAX_LINE_BYTES // (1 << 20)} MiB; "
                             "is this the right file?")
        try:
            text = chunk.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            bad = chunk[exc.start:exc.start + 4].hex(" ")
            raise InputError(f"{path}: line {number} is not UTF-8 (bytes {bad} at column "
                             f"{exc.start + 1}); convert the file to UTF-8, e.g. with iconv") from None
        yield text


def _key_column(columns: Sequence[str], key_columns: Sequence[str], path: Path | None) -> str:
    for name in key_columns:
        if name in columns:
            return name
    where = f"{path}: " if path else ""
    raise InputError(f"{where}no id column: expected one of {', '.join(key_columns)}; "
                     f"found {', '.join(columns) or 'no columns'}")


def _csv_rows(lines: Iterator[str], path: Path, key_columns: Sequence[str]) -> Iterator[Row]:
    # reader.line_num counts the lines taken from `lines`, so a record
    # starts on the line after the ones its predecessors took.
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: the file is empty") from None
    except csv.Error as exc:
        raise InputError(f"{path}: line 1: {exc}") from None
    columns = [c.strip().lower() for c in header]
    key = _key_column(columns, key_columns, path)
    names = ["key" if c == key else c for c in columns]
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{path}: line {line}: {exc}") from None
        if len(values) != len(names):
            if any(v.strip() for v in values):
                yield Row(line, problem=f"{len(values)} values for {len(names)} columns")
            continue
        if any(v.strip() for v in values):
            yield _checked(Row(line, dict(zip(names, values, strict=True))))


def _jsonl_rows(lines: Iterator[tuple[int, str]], key_columns: Sequence[str]) -> Iterator[Row]:
    for number, text in lines:
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as exc:
            yield Row(number, problem=f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield Row(number, problem="not a JSON object")
            continue
        fields = {str(k).strip().lower(): _as_text(v) for k, v in obj.items() if v is not None}
        key = next((c for c in key_columns if c in fields), None)
        if key is None:
            yield Row(number, fields, problem=f"no id field (one of {', '.join(key_columns)})")
            continue
        fields["key"] = fields.pop(key)
        yield _checked(Row(number, fields))


def _checked(row: Row) -> Row:
    """The row, refused when a field holds a NUL byte: no vendor takes one and
    PostgreSQL cannot store one, so it is the row's problem on every database."""
    for name, value in row.fields.items():
        if "\x00" in name:
            return Row(row.line, problem="a field name contains a NUL byte")
        if "\x00" in value:
            return Row(row.line, problem=f"{'user_id' if name == 'key' else name}: contains a NUL byte")
    return row


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
