"""The CLI's params file: a JSON list of objects, or JSON Lines; bad input names the line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from jobfleet.cli.params_file import parse_params, read_params
from jobfleet.errors import InvalidParams


def test_a_json_list_of_objects() -> None:
    text = '[\n  {"url": "a.png"},\n  {"url": "b.png", "width": 64}\n]\n'
    assert parse_params(text) == [{"url": "a.png"}, {"url": "b.png", "width": 64}]


def test_json_lines_with_blank_lines_between() -> None:
    text = '{"url": "a.png"}\n\n{"url": "b.png"}\n   \n{"url": "c.png"}\n'
    assert parse_params(text) == [{"url": "a.png"}, {"url": "b.png"}, {"url": "c.png"}]


def test_a_single_json_object_is_one_parameter_set() -> None:
    assert parse_params('{"url": "a.png"}') == [{"url": "a.png"}]


def test_an_empty_list_is_read_as_no_parameter_sets() -> None:
    assert parse_params("[]") == []


def test_invalid_json_list_names_the_line_and_column() -> None:
    text = '[\n  {"url": "a.png"},\n  {"url": },\n]'
    with pytest.raises(InvalidParams, match=r"params is not valid JSON: .* at line 3 column"):
        parse_params(text)


def test_invalid_json_lines_names_the_line() -> None:
    text = '{"url": "a.png"}\n{"url": "b.png"}\n{"url": "c.png"\n{"url": "d.png"}\n'
    with pytest.raises(InvalidParams, match=r"params line 3 is not valid JSON"):
        parse_params(text)


def test_invalid_json_lines_names_the_line_of_the_file_after_leading_blank_lines() -> None:
    text = '\n\n{"url": "a.png"}\n{"url": \n'
    with pytest.raises(InvalidParams, match=r"line 4 is not valid JSON"):
        parse_params(text)


@pytest.mark.parametrize("document", ["42", '"a.png"', "null", "true", "3.5"])
def test_a_json_document_that_is_not_a_list_is_refused(document: str) -> None:
    with pytest.raises(InvalidParams, match="must be a JSON list of objects"):
        parse_params(document)


def test_a_pretty_printed_object_is_refused_with_the_expected_shapes() -> None:
    with pytest.raises(InvalidParams, match=r"line 1 is not valid JSON.*JSON list of objects"):
        parse_params('{\n  "url": "a.png"\n}\n')


@pytest.mark.parametrize("text", ["", "  \n\n  "])
def test_empty_input_is_refused(text: str) -> None:
    with pytest.raises(InvalidParams, match="params is empty"):
        parse_params(text)


def test_read_params_from_a_file_names_the_file_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "params.jsonl"
    good.write_text('{"n": 1}\n{"n": 2}\n', encoding="utf-8")
    bad = tmp_path / "broken.json"
    bad.write_text('[{"n": 1},', encoding="utf-8")

    assert read_params(str(good)) == [{"n": 1}, {"n": 2}]
    with pytest.raises(InvalidParams, match=r"'.*broken\.json' is not valid JSON"):
        read_params(str(bad))


def test_a_missing_file_is_refused_with_its_name(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(InvalidParams, match=r"cannot read params file '.*nope\.json'"):
        read_params(str(missing))


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('[{"n": 1}]'))
    assert read_params("-") == [{"n": 1}]

    monkeypatch.setattr("sys.stdin", io.StringIO("{oops"))
    with pytest.raises(InvalidParams, match="standard input line 1 is not valid JSON"):
        read_params("-")
