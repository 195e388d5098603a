"""Reading a Bulk 2.0 ingest job's result CSVs (retention.hooks.salesforce_bulk) as they are downloaded, line by
line, never as a whole text: the shapes "Get Job Successful Record Results" and "Get Job Failed Record Results"
document (Bulk API 2.0 and Bulk API Developer Guide): ``sf__Id``, ``sf__Created`` then the uploaded columns for
successes; ``sf__Id``, ``sf__Error`` then the uploaded columns for failures, whose messages may hold commas, quotes
and line breaks."""

from __future__ import annotations

import csv

import pytest

from retention.hooks.salesforce_bulk import _first_column, _lines


def chunked(text: str, size: int) -> list[bytes]:
    """``text`` as UTF-8 arriving ``size`` bytes at a time, as a streamed download does."""
    data = text.encode()
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_lines_are_yielded_one_at_a_time_with_their_ends_whatever_the_chunks():
    for size in (1, 2, 3, 100):
        assert list(_lines(chunked("a\nb\r\nc", size))) == ["a\n", "b\r\n", "c"]
        assert list(_lines(chunked("only\n", size))) == ["only\n"]
    assert list(_lines([])) == [] and list(_lines([b""])) == []


def test_a_character_split_between_chunks_is_decoded_whole():
    text = "003A,Zoë Ångström\n003B,北京\n"
    for size in range(1, 8):
        assert "".join(_lines(chunked(text, size))) == text
        assert list(_lines(chunked(text, size)))[1] == "003B,北京\n"


def test_successes_give_their_ids_in_order_and_a_wrong_header_is_refused():
    text = '"sf__Id","sf__Created",Id\n"003A","false","003A"\n"003B","false","003B"\n'
    assert list(_first_column(_lines(chunked(text, 5)), "sf__Id")) == ["003A", "003B"]
    assert list(_first_column(_lines([]), "sf__Id")) == []
    with pytest.raises(ValueError, match="expected sf__Id first"):
        list(_first_column(_lines([b'Id,"sf__Id"\n"003A","003A"\n']), "sf__Id"))


def test_failures_keep_messages_with_commas_quotes_and_line_breaks_whole():
    text = ('"sf__Id","sf__Error",Id\n'
            '"003A","ENTITY_IS_DELETED:entity is deleted:--","003A"\n'
            '"003B","FIELD_CUSTOM_VALIDATION_EXCEPTION:Keep, ""please""\nsecond\rline:--","003B"\n')
    for size in (1, 7, 1000):
        assert [(r["sf__Id"], r["sf__Error"]) for r in csv.DictReader(_lines(chunked(text, size)))] == [
            ("003A", "ENTITY_IS_DELETED:entity is deleted:--"),
            ("003B", 'FIELD_CUSTOM_VALIDATION_EXCEPTION:Keep, "please"\nsecond\rline:--')]
    assert list(csv.DictReader(_lines([]))) == [] and list(csv.DictReader(_lines([b"\n"]))) == []
