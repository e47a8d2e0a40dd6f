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
