"""Record IDs: the 18-character checksum must match Salesforce's for published example IDs."""

import pytest

from sandbox import ids
from sandbox.objects import OBJECTS

# 15-character IDs and their 18-character forms as published in Salesforce knowledge articles and
# community write-ups of the CASESAFEID algorithm.
PUBLISHED = [
    ("0019000000B98de", "0019000000B98deAAB"),
    ("a0D30000001n7Pi", "a0D30000001n7PiEAI"),
    ("0019000000oC4Hk", "0019000000oC4HkAAK"),
]


@pytest.mark.parametrize(("id15", "id18"), PUBLISHED)
def test_checksum_matches_published_examples(id15, id18):
    assert ids.to18(id15) == id18
    assert ids.is_valid(id18)


def test_a_wrong_checksum_or_character_is_rejected():
    assert not ids.is_valid("0019000000B98deAAC")
    assert not ids.is_valid("0019000000B98de-AB")
    assert not ids.is_valid("0019000000B98")


def test_generated_ids_carry_the_key_prefix_and_a_valid_checksum():
    for obj in OBJECTS.values():
        made = [ids.make_id(obj.key_prefix, n) for n in (1, 61, 62, 3843, 10**6, 62**9 - 1)]
        assert len(set(made)) == len(made)
        for record_id in made:
            assert len(record_id) == 18 and record_id.startswith(obj.key_prefix)
            assert ids.is_valid(record_id)
            assert ids.checksum(record_id[:15]) == record_id[15:]


def test_ids_differing_only_in_case_get_different_suffixes():
    a, b = ids.make_id("003", 10), ids.make_id("003", 36)  # serials whose digit is 'A' and 'a'
    assert a[:15].lower() == b[:15].lower() and a[:15] != b[:15]
    assert a.lower() != b.lower()
