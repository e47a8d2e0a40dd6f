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
import io
import itertools
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

MAX_LINE_BYTES = 1 << 20  # no legitimate row is near 1 MiB; a 10 MB line is a broken file
BLOCK_BYTES = 1 << 20  # the columnar reader decodes and splits the file this much at a time

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


@dataclass
class RowBatch:
    """Rows of a CSV file a batch at a time, column by column: `columns[c][i]`
    is the value of column `names[c]` in the row that starts on `lines[i]`.
    A row that could not be read has "" in every column and its reason in
    `problems[i]`. The same rows, values and reasons as `Row`s would carry."""

    lines: Sequence[int]
    names: list[str]  # column names as `Row.fields` keys them ("key" for the id column)
    columns: list[Sequence[str]]
    problems: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lines)


class Rows:
    """The rows of an input file: iterate it for `Row`s, one at a time; a
    CSV file can also be read in `RowBatch`es (`columnar`), which costs far
    less per row. Nothing is read before the first row is asked for."""

    def __init__(self, path: str | Path, key_columns: Sequence[str]):
        self.path = Path(path)
        self.key_columns = key_columns
        self._rows: Iterator[Row] | None = None

    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row:
        if self._rows is None:
            self._rows = _read_rows(self.path, self.key_columns)
        return next(self._rows)

    @property
    def columnar(self) -> bool:
        return self._rows is None and self.path.suffix.lower() == ".csv"

    def batches(self, size: int) -> Iterator[RowBatch]:
        """The rows in batches of at most `size`; only for a CSV file."""
        if not self.columnar:
            raise ValueError("only an unread CSV file is read in batches")
        self._rows = iter(())
        return _read_batches(self.path, self.key_columns, size)


def read_rows(path: str | Path, *, key_columns: Sequence[str] = USER_ID_COLUMNS) -> Rows:
    """Rows of a .csv, .jsonl/.ndjson or .txt (one id per line) file.
    The first present column of `key_columns` is renamed "key"."""
    return Rows(path, key_columns)


def _read_rows(path: Path, key_columns: Sequence[str]) -> Iterator[Row]:
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


def _line_blocks(raw: IO[bytes], path: Path) -> Iterator[io.StringIO]:
    """The file's lines as `_checked_lines` gives them (split at "\\n" only,
    endings kept), a block of about BLOCK_BYTES at a time, each block decoded
    and split in C. A block with a broken line raises InputError; the
    caller reads the file again row by row for the exact message."""
    carry = b""  # the start of a line the last block cut
    first = True
    while True:
        block = raw.read(BLOCK_BYTES)
        data = carry + block if carry else block
        if not data:
            return
        if block:
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line ends in it yet
                if len(data) > MAX_LINE_BYTES:
                    raise InputError(f"{path}: a line is too long")
                carry = data
                continue
            body, carry = data[:cut], data[cut:]
            if len(carry) > MAX_LINE_BYTES:
                raise InputError(f"{path}: a line is too long")
        else:  # the last line, without an ending
            body, carry = data, b""
        if len(body) > MAX_LINE_BYTES:  # only then can a line of it be too long
            pieces = body.split(b"\n")  # each but the last had an ending
            if max(map(len, pieces[:-1])) + 1 > MAX_LINE_BYTES or len(pieces[-1]) > MAX_LINE_BYTES:
                raise InputError(f"{path}: a line is too long")
        try:
            text = body.decode("utf-8-sig" if first else "utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8") from None
        first = False
        yield io.StringIO(text, newline="\n")


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


def _read_batches(path: Path, key_columns: Sequence[str], size: int) -> Iterator[RowBatch]:
    """`_csv_rows` a batch at a time: the csv module reads the rows, and
    what `_csv_rows` asks of each row (its width, a value, no NUL byte, its
    starting line) is asked of the whole batch at once, falling back to the
    row-by-row rules for the few rows that fail. A broken file is read again
    row by row, so its InputError is the one `read_rows` raises."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        yield from _exactly(_batches(path, key_columns, size), size)
    except (InputError, csv.Error) as exc:
        for _ in _read_rows(path, key_columns):  # raises the row-by-row reader's error
            pass
        raise InputError(f"{path}: {exc}") from None  # not reached: the same file fails the same way


def _batches(path: Path, key_columns: Sequence[str], size: int) -> Iterator[RowBatch]:
    with path.open("rb") as raw:
        reader = csv.reader(itertools.chain.from_iterable(_line_blocks(raw, path)), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: the file is empty") from None
        columns = [c.strip().lower() for c in header]
        key = _key_column(columns, key_columns, path)
        names = ["key" if c == key else c for c in columns]
        width, at = len(names), names.index("key")
        key_of = operator.itemgetter(slice(at, at + 1))  # [] for a row too short to have one
        bad_name = any("\x00" in n for n in names)
        while True:
            before = reader.line_num
            records = list(itertools.islice(reader, size))
            if not records:
                return
            if reader.line_num - before == len(records):
                lines: Sequence[int] = range(before + 1, before + 1 + len(records))
            else:  # a quoted value spans lines: each "\n" in a record's values is one more line
                lines, at = [], before + 1
                for values in records:
                    lines.append(at)
                    at += 1 + sum(v.count("\n") for v in values)
            # Rows a row-by-row look must sort out (in C: map and compress).
            every = range(len(records))
            suspects = set(every) if bad_name else set()
            suspects.update(itertools.compress(every, map(width.__ne__, map(len, records))))
            if not all(map(str.strip, map("".join, map(key_of, records)))):  # no id: maybe blank
                suspects.update(itertools.compress(every, map(operator.not_, map(
                    str.strip, map("".join, map(key_of, records))))))
            if "\x00" in "".join(map("".join, records)):
                suspects.update(itertools.compress(every, map(
                    operator.methodcaller("__contains__", "\x00"), map("".join, records))))
            problems: dict[int, str] = {}
            if suspects:
                records, lines, problems = _sorted_out(records, lines, names, suspects)
                if not records:
                    continue
            yield RowBatch(lines, names, list(zip(*records, strict=False)), problems)


def _exactly(batches: Iterator[RowBatch], size: int) -> Iterator[RowBatch]:
    """Batches of `size` rows (the last one: what is left), as batching
    `Row`s would cut them: where blank rows were left out, the next batch's
    first rows fill the gap."""
    held: RowBatch | None = None
    for batch in batches:
        if held is not None:
            batch = RowBatch([*held.lines, *batch.lines], batch.names,
                             [(*a, *b) for a, b in zip(held.columns, batch.columns, strict=False)],
                             {**held.problems, **{len(held) + i: p for i, p in batch.problems.items()}})
            held = None
        if len(batch) < size:
            held = batch
            continue
        if len(batch) > size:
            held = _part(batch, size, len(batch))
            batch = _part(batch, 0, size)
        yield batch
    if held is not None and len(held):
        yield held


def _part(batch: RowBatch, start: int, end: int) -> RowBatch:
    return RowBatch(batch.lines[start:end], batch.names, [c[start:end] for c in batch.columns],
                    {i - start: p for i, p in batch.problems.items() if start <= i < end})


def _sorted_out(records: list[list[str]], lines: Sequence[int], names: list[str],
                suspects: set[int]) -> tuple[list[list[str]], list[int], dict[int, str]]:
    """A batch's rows as `_csv_rows` gives them, going through the
    `suspects` row by row: blank rows left out, rows of the wrong width and
    rows with a NUL byte kept with their reason."""
    kept: list[list[str]] = []
    kept_lines: list[int] = []
    problems: dict[int, str] = {}
    blank = [""] * len(names)
    for i, (line, values) in enumerate(zip(lines, records, strict=False)):
        if i not in suspects:
            kept.append(values)
            kept_lines.append(line)
            continue
        if len(values) != len(names):
            if any(v.strip() for v in values):
                problems[len(kept)] = f"{len(values)} values for {len(names)} columns"
                kept.append(blank)
                kept_lines.append(line)
            continue
        if not any(v.strip() for v in values):
            continue
        checked = _checked(Row(line, dict(zip(names, values, strict=False))))
        if checked.problem:
            problems[len(kept)] = checked.problem
            values = blank
        kept.append(values)
        kept_lines.append(line)
    return kept, kept_lines, problems


def _jsonl_rows(lines: Iterator[tuple[int, str]], key_columns: Sequence[str]) -> Iterator[Row]:
    for number, text in lines:
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Row(number, problem=f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        except ValueError as exc:  # a number of more than 4,300 digits (sys.get_int_max_str_digits)
            yield Row(number, problem=f"not read: {str(exc).split(':')[0]}")
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
