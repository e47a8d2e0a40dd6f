"""Input readers: every row keeps the line it starts on, whatever comes before it."""

import pytest

from imshift.jobs.inputs import InputError, read_rows


def rows_of(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return [(r.line, r.fields, r.problem) for r in read_rows(path)]


def test_csv_rows_keep_their_starting_line_across_quoted_newlines_and_blank_lines(tmp_path):
    text = ("\ufeffUser_ID,Name\n"
            "a1,Ann\n"
            "\n"
            'a2,"two\nlines"\n'
            "a3\n"
            " , \n"
            "a4, Zoë \n")
    assert rows_of(tmp_path, "u.csv", text) == [
        (2, {"key": "a1", "name": "Ann"}, None),
        (4, {"key": "a2", "name": "two\nlines"}, None),
        (6, {}, "1 values for 2 columns"),
        (8, {"key": "a4", "name": " Zoë "}, None),  # values as written
    ]


def test_a_broken_quote_names_the_line_its_record_starts_on(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text('user_id,name\na1,Ann\na2,"never\nclosed\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"u\.csv: line 3: "):
        list(read_rows(path))


def test_jsonl_and_txt_rows_are_numbered_by_line(tmp_path):
    jsonl = '{"uid": "a1", "name": "Ann"}\n\nnot json\n{"name": "no id"}\n'
    assert [(line, problem) for line, _, problem in rows_of(tmp_path, "u.jsonl", jsonl)] == [
        (1, None), (3, "not valid JSON (Expecting value at column 1)"),
        (4, "no id field (one of user_id, userid, id, uid, accid, username, user)")]
    assert rows_of(tmp_path, "u.txt", "a1\n\n a2 \n") == [(1, {"key": "a1"}, None),
                                                          (3, {"key": " a2 "}, None)]


def test_a_jsonl_number_too_long_for_python_is_the_rows_problem(tmp_path):
    """json.loads refuses an integer of more than 4,300 digits with a plain
    ValueError (no position): the row says so, the rows after it are read."""
    jsonl = '{"uid": ' + "7" * 5000 + '}\n{"uid": "b"}\n'
    assert rows_of(tmp_path, "u.jsonl", jsonl) == [
        (1, {}, "not read: Exceeds the limit (4300 digits) for integer string conversion"),
        (2, {"key": "b"}, None)]


def test_values_pass_through_as_written_in_every_format(tmp_path):
    assert rows_of(tmp_path, "u.csv", "user_id , Name\r\n bob ,  spaced  \r\n") == [
        (2, {"key": " bob ", "name": "  spaced  "}, None)]
    assert rows_of(tmp_path, "u.jsonl", '{"uid": " bob", "name": "  spaced  ", "age": 3}\n') == [
        (1, {"key": " bob", "name": "  spaced  ", "age": "3"}, None)]
    assert rows_of(tmp_path, "u.txt", "bob \r\n\tann\n") == [(1, {"key": "bob "}, None),
                                                             (2, {"key": "\tann"}, None)]


def test_a_nul_byte_is_the_rows_problem_in_every_format(tmp_path):
    assert rows_of(tmp_path, "u.csv", "user_id,name\nal\x00ice,Alice\nbob,B\x00b\nann,Ann\n") == [
        (2, {}, "user_id: contains a NUL byte"), (3, {}, "name: contains a NUL byte"),
        (4, {"key": "ann", "name": "Ann"}, None)]
    assert rows_of(tmp_path, "u.jsonl", '{"uid": "a", "name": "x\\u0000"}\n{"uid": "b"}\n') == [
        (1, {}, "name: contains a NUL byte"), (2, {"key": "b"}, None)]
    assert rows_of(tmp_path, "u.txt", "a\x00\nb\n") == [(1, {}, "user_id: contains a NUL byte"),
                                                       (2, {"key": "b"}, None)]


# -- the columnar reader (RowBatch): the same rows, values and reasons as Rows

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imshift.jobs import inputs


def batched(path, size):
    """read_rows(path).batches(size) as the (line, fields, problem) of each row."""
    out = []
    for batch in read_rows(path).batches(size):
        assert 0 < len(batch) <= size
        for i, line in enumerate(batch.lines):
            if i in batch.problems:
                out.append((line, {}, batch.problems[i]))
            else:
                out.append((line, {n: c[i] for n, c in zip(batch.names, batch.columns, strict=False)}, None))
    return out


def one_by_one(path):
    return [(r.line, r.fields, r.problem) for r in read_rows(path)]


def outcome(read):
    try:
        return read()
    except InputError as exc:
        return ("InputError", str(exc))


# Characters that make a CSV hard: quotes, separators, every line ending,
# Unicode line breaks the csv module must not split at, NUL, a BOM.
NASTY = st.sampled_from(['a', 'B', ',', '"', '\n', '\r', ' ', '\t', 'é', '名', '🚀', '\x00', '\u2028',
                         '\x85', '\ufeff'])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(["user_id,name,x\n", "name,uid\n", "\ufeffUser_ID , Name\r\n", "id\n",
                               "user_id,na\x00me\n", "name\n"]),
       body=st.lists(NASTY, max_size=80).map("".join), size=st.integers(1, 6))
def test_batches_give_the_rows_read_rows_gives(tmp_path, header, body, size):
    path = tmp_path / "u.csv"
    path.write_bytes((header + body).encode("utf-8"))
    assert outcome(lambda: batched(path, size)) == outcome(lambda: one_by_one(path))


@pytest.mark.parametrize("raw", [
    b"user_id,name\na,b\nc,\xff\xfe\n",  # not UTF-8
    b"user_id,name\na,\"x\n\xe4\n",  # not UTF-8 inside a quoted value
    b"user_id,name\na,b,\"c\nd,e\n" + b"f,\xff\n",  # a broken quote before a bad byte: the quote is named
    b'user_id,name\na1,Ann\na2,"never\nclosed\n',
    b"", b"name\nann\n",
    b"user_id,name\n" + b"a,b\n" * 5 + b"c," + b"x" * 60 + b"\nd,e\n",  # too long (limit 40 below)
    b"user_id,name\n" + b"a,b\n" * 5 + b"c," + b"x" * 37 + b"\n",  # 40 bytes: not too long
    b"user_id,name\n" + b"a,b\n" * 5 + b"c," + b"x" * 38,  # 40 bytes with no ending: not too long
    b"user_id,name\n" + b"a,b\n" * 5 + b"c," + b"x" * 39,  # 41
])
def test_batches_fail_with_read_rows_message_and_keep_its_line_limit(tmp_path, monkeypatch, raw):
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", 40)
    monkeypatch.setattr(inputs, "BLOCK_BYTES", 16)  # lines cut across blocks
    path = tmp_path / "u.csv"
    path.write_bytes(raw)
    assert outcome(lambda: batched(path, 3)) == outcome(lambda: one_by_one(path))


def test_batches_are_cut_where_row_batches_would_be_across_blank_rows(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("user_id\na\n\n  \nb\nc\n,\nd\ne\n", encoding="utf-8")
    assert [list(b.lines) for b in read_rows(path).batches(2)] == [[2, 5], [6, 8], [9]]
