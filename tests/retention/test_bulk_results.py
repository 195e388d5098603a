"""Reading a Bulk 2.0 ingest job's result CSVs (retention.hooks.salesforce_bulk) line by line, never as a whole copy:
the shapes "Get Job Successful Record Results" and "Get Job Failed Record Results" document (Bulk API 2.0 and Bulk
API Developer Guide): ``sf__Id``, ``sf__Created`` then the uploaded columns for successes; ``sf__Id``,
``sf__Error`` then the uploaded columns for failures, whose messages may hold commas, quotes and line breaks."""

from __future__ import annotations

import pytest

from retention.hooks.salesforce_bulk import _first_column, _lines, _rows


def test_lines_are_yielded_one_at_a_time_with_their_ends():
    assert list(_lines("a\nb\r\nc")) == ["a\n", "b\r\n", "c"]
    assert list(_lines("")) == []
    assert list(_lines("only\n")) == ["only\n"]


def test_successes_give_their_ids_in_order_and_a_wrong_header_is_refused():
    text = '"sf__Id","sf__Created",Id\n"003A","false","003A"\n"003B","false","003B"\n'
    assert list(_first_column(text, "sf__Id")) == ["003A", "003B"]
    assert list(_first_column("", "sf__Id")) == []
    with pytest.raises(ValueError, match="expected sf__Id first"):
        list(_first_column('Id,"sf__Id"\n"003A","003A"\n', "sf__Id"))


def test_failures_keep_messages_with_commas_quotes_and_line_breaks_whole():
    text = ('"sf__Id","sf__Error",Id\n'
            '"003A","ENTITY_IS_DELETED:entity is deleted:--","003A"\n'
            '"003B","FIELD_CUSTOM_VALIDATION_EXCEPTION:Keep, ""please""\nsecond line:--","003B"\n')
    assert [(r["sf__Id"], r["sf__Error"]) for r in _rows(text)] == [
        ("003A", "ENTITY_IS_DELETED:entity is deleted:--"),
        ("003B", 'FIELD_CUSTOM_VALIDATION_EXCEPTION:Keep, "please"\nsecond line:--')]
    assert list(_rows("")) == [] and list(_rows("\n")) == []
