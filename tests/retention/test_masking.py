"""Masking strategies: every masked value stays valid for its Salesforce field, and each strategy is random or
reproducible exactly as promised (a retried task must write what the first attempt wrote)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest

from retention import masking, transforms
from retention.masking import (
    Masker,
    is_valid_email,
    mask_value,
    to_bulk_csv_value,
    validate_field_type,
    validate_options,
)

KEY = b"masking-test-key-0123456789abcdef"
RECORD = "003000000000001AAA"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.000Z$")


def mask(strategy, original, field_type="string", field_name="Field__c", record_id=RECORD, key=KEY, **options):
    length = options.pop("length", None)
    return mask_value(
        strategy, original, field_name=field_name, field_type=field_type, record_id=record_id, key=key,
        options=options, field_length=length,
    )


def record_ids(n: int) -> list[str]:
    return [f"003{i:012d}AAA" for i in range(n)]


# ------------------------------------------------------------------------------------------- anonymize


def test_anonymize_text_is_five_random_alphanumerics():
    values = [mask("anonymize", "Blake") for _ in range(50)]
    assert all(re.fullmatch(r"[A-Za-z0-9]{5}", v) for v in values)
    assert len(set(values)) == 50  # random on every call, not derived from the value
    assert mask("anonymize", "Blake", length=3).__len__() == 3


def test_anonymize_email_is_a_valid_invalid_address():
    first, second = (mask("anonymize", "blake@example.com", "email") for _ in range(2))
    assert first != second
    for address in (first, second):
        assert re.fullmatch(r"[a-z0-9]{5}@[a-z0-9]{5}\.invalid", address)
        assert is_valid_email(address)
    short = mask("anonymize", "blake@example.com", "email", length=13)
    assert is_valid_email(short) and len(short) <= 13 and short.endswith(".invalid")


def test_anonymize_phone_is_digits_only():
    phone = mask("anonymize", "+1 (555) 010-9999", "phone")
    assert phone.isdigit() and len(phone) == 11
    assert mask("anonymize", "ext. only", "phone").isdigit()
    assert len(mask("anonymize", "+1 (555) 010-9999", "phone", length=6)) == 6
    assert mask("anonymize", "+1 (555) 010-9999", "phone") != mask("anonymize", "+1 (555) 010-9999", "phone")


def test_empty_originals_stay_empty():
    for strategy, ftype in [("anonymize", "string"), ("pseudonymize", "string"), ("hash", "email"),
                            ("format_preserving", "phone")]:
        assert mask(strategy, None, ftype) is None
        assert mask(strategy, "", ftype) is None


# ---------------------------------------------------------------------------------------- pseudonymize


@pytest.mark.parametrize(
    ("field_name", "library"),
    [("FirstName", masking.FIRST_NAMES), ("LastName", masking.LAST_NAMES), ("MailingCity", masking.CITIES),
     ("Company", masking.COMPANIES), ("Employer__c", masking.COMPANIES), ("Description", masking.WORDS)],
)
def test_pseudonymize_draws_from_the_field_kind_library(field_name, library):
    value = mask("pseudonymize", "Kelsey", field_name=field_name)
    assert value in library
    assert value == mask("pseudonymize", "Kelsey", field_name=field_name, record_id="003000000000002AAA")


def test_pseudonymize_is_deterministic_per_key_and_value():
    names = [mask("pseudonymize", f"Person{i}", field_name="FirstName") for i in range(200)]
    assert names == [mask("pseudonymize", f"Person{i}", field_name="FirstName") for i in range(200)]
    assert len(set(names)) > 100  # spread over the library
    other_key = [mask("pseudonymize", f"Person{i}", field_name="FirstName", key=b"other") for i in range(200)]
    assert sum(a != b for a, b in zip(names, other_key, strict=True)) > 150


def test_pseudonymize_never_returns_the_original():
    for name in masking.FIRST_NAMES:
        assert mask("pseudonymize", name, field_name="FirstName") != name


def test_pseudonymize_full_name_email_and_options():
    full = mask("pseudonymize", "Kelsey Smith", field_name="Name")
    first, last = full.split(" ")
    assert first in masking.FIRST_NAMES and last in masking.LAST_NAMES
    address = mask("pseudonymize", "kelsey@example.com", "email", field_name="Email")
    assert is_valid_email(address) and address.endswith(".invalid")
    assert address == mask("pseudonymize", "kelsey@example.com", "email", field_name="Email")
    assert mask("pseudonymize", "Kelsey", field_name="Nickname__c", library="city") in masking.CITIES
    assert len(mask("pseudonymize", "Kelsey Smith", field_name="Name", length=4)) <= 4


def test_word_libraries_are_a_few_hundred_clean_entries():
    for library in (masking.FIRST_NAMES, masking.LAST_NAMES, masking.CITIES, masking.COMPANIES, masking.WORDS):
        assert 100 <= len(library) <= 400
        assert len(set(library)) == len(library)
        assert all(word and word == word.strip() and "|" not in word for word in library)


# ------------------------------------------------------------------------------------------------ hash


def test_hash_is_keyed_hmac_and_joins_to_the_retained_hash():
    value = mask("hash", "Kelsey")
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert value == transforms.apply("hash", None, "Kelsey", key=KEY)
    assert value == mask("hash", "Kelsey", record_id="other")
    assert value != mask("hash", "Kelsey", key=b"other")
    assert mask("hash", "Kelsey", length=10) == value[:10]
    assert len(mask("hash", "+1 555 0100", "phone")) == 40


def test_hash_email():
    address = mask("hash", "kelsey@example.com", "email")
    digest = transforms.apply("hash", None, "kelsey@example.com", key=KEY)
    assert address == f"{digest[:20]}@hash.invalid"
    assert is_valid_email(address)
    assert len(mask("hash", "kelsey@example.com", "email", length=20)) <= 20


# -------------------------------------------------------------------------------------- nullify, static


def test_nullify_and_bulk_csv_values():
    assert mask("nullify", "Kelsey") is None
    assert mask("nullify", dt.date(1980, 1, 1), "date") is None
    assert to_bulk_csv_value(None) == "#N/A"
    assert to_bulk_csv_value("") == "#N/A"  # an empty Bulk cell would leave the old value in place
    assert to_bulk_csv_value("x") == "x"
    assert to_bulk_csv_value(True) == "true"
    assert to_bulk_csv_value(42) == "42"
    assert to_bulk_csv_value(1e20) == "100000000000000000000"
    assert to_bulk_csv_value(0.1) == "0.1"
    assert to_bulk_csv_value(Decimal("12.50")) == "12.50"
    assert to_bulk_csv_value(dt.date(2024, 2, 29)) == "2024-02-29"
    assert to_bulk_csv_value(dt.datetime(2024, 2, 29, 13, 1, 2, 345678)) == "2024-02-29T13:01:02.345Z"
    offset = dt.timezone(dt.timedelta(hours=2))
    assert to_bulk_csv_value(dt.datetime(2024, 2, 29, 1, 0, tzinfo=offset)) == "2024-02-28T23:00:00.000Z"


def test_static_values_take_the_field_type_form():
    assert mask("static", "Kelsey", value="Redacted") == "Redacted"
    assert mask("static", None, value="Redacted") == "Redacted"
    assert mask("static", "x@y.com", "email", value="redacted@example.invalid") == "redacted@example.invalid"
    assert mask("static", "1980-05-17", "date", value=dt.date(1900, 1, 1)) == "1900-01-01"
    assert mask("static", "x", "datetime", value="2000-01-01") == "2000-01-01T00:00:00.000Z"
    assert mask("static", 5, "int", value=0) == 0
    assert mask("static", 5.5, "currency", value="0.50") == 0.5
    assert mask("static", True, "boolean", value=False) is False
    assert mask("static", "x", value=None) is None
    with pytest.raises(ValueError, match="valid"):
        mask("static", "x@y.com", "email", value="not an email")
    with pytest.raises(ValueError, match="longer"):
        mask("static", "x", value="Redacted", length=3)


# ----------------------------------------------------------------------------------- random_date, number


def test_random_date_in_range_and_reproducible_per_record():
    options = {"start": "1950-01-01", "end": dt.date(2000, 12, 31)}
    values = [mask("random_date", "1980-05-17", "date", record_id=rid, **options) for rid in record_ids(300)]
    assert all(DATE.fullmatch(v) and "1950-01-01" <= v <= "2000-12-31" for v in values)
    assert len(set(values)) > 250
    assert values == [mask("random_date", "x", "date", record_id=rid, **options) for rid in record_ids(300)]
    assert values != [mask("random_date", "x", "date", record_id=rid, key=b"k", **options) for rid in record_ids(300)]
    # Two date fields of one record are drawn independently.
    assert values != [mask("random_date", "x", "date", field_name="Other__c", record_id=rid, **options)
                      for rid in record_ids(300)]
    assert mask("random_date", "x", "date", start="2001-02-03", end="2001-02-03") == "2001-02-03"


def test_random_datetime_in_range():
    values = [mask("random_date", "x", "datetime", record_id=rid, start="2020-01-01", end="2020-01-02")
              for rid in record_ids(200)]
    assert all(DATETIME.fullmatch(v) for v in values)
    assert all("2020-01-01T00:00:00.000Z" <= v <= "2020-01-02T23:59:59.000Z" for v in values)
    assert len(set(v[:10] for v in values)) == 2


def test_random_number():
    ints = [mask("random_number", 5, "int", record_id=rid, min=1, max=6) for rid in record_ids(300)]
    assert set(ints) == {1, 2, 3, 4, 5, 6}
    assert ints == [mask("random_number", 5, "int", record_id=rid, min=1, max=6) for rid in record_ids(300)]
    floats = [mask("random_number", 5, "currency", record_id=rid, min=0.5, max=2.5) for rid in record_ids(300)]
    assert all(isinstance(f, float) and 0.5 <= f <= 2.5 and round(f, 2) == f for f in floats)
    assert len(set(floats)) > 100
    precise = mask("random_number", 5, "double", min=0, max=1, decimals=4)
    assert isinstance(precise, float) and round(precise, 4) == precise
    assert isinstance(mask("random_number", 5, "double", min=0, max=100), int)
    assert all(2 <= mask("random_number", 5, "int", record_id=rid, min=1.5, max=3.5) <= 3 for rid in record_ids(50))


# ---------------------------------------------------------------------------------- format_preserving


def _shape(text: str) -> str:
    return "".join("A" if c.isupper() else "a" if c.isalpha() else "9" if c.isdigit() else c for c in text)


@pytest.mark.parametrize(
    ("value", "ftype"),
    [("Ann-Marie O'Neil", "string"), ("+1 (555) 010-9999", "phone"), ("ann.o-neil+crm@mail.example.co.uk", "email"),
     ("Zoë Ōkubo", "string"), ("AB-1234-cd", "textarea")],
)
def test_format_preserving_keeps_the_shape(value, ftype):
    masked = mask("format_preserving", value, ftype, field_name="F")
    assert _shape(masked) == _shape(value)
    assert masked != value
    assert masked == mask("format_preserving", value, ftype, field_name="F")
    assert masked != mask("format_preserving", value, ftype, field_name="F", record_id="003000000000002AAA")
    assert masked != mask("format_preserving", value, ftype, field_name="G")
    if ftype == "email":
        assert is_valid_email(masked)
        assert masked.count(".") == value.count(".") and masked.index("@") == value.index("@")


def test_format_preserving_numbers_keep_magnitude():
    for rid in record_ids(50):
        masked = mask("format_preserving", 123456, "int", record_id=rid)
        assert isinstance(masked, int) and 100000 <= masked <= 999999
        amount = mask("format_preserving", Decimal("-1234.50"), "currency", record_id=rid)
        assert isinstance(amount, float) and -9999.99 <= amount <= -1000


# -------------------------------------------------------------------------------------------- validation


def test_validate_options():
    assert validate_options("anonymize", {}) == []
    assert validate_options("pseudonymize", {"library": "city", "field_length": 40}) == []
    assert validate_options("random_date", {"start": dt.date(1950, 1, 1), "end": "2000-12-31"}) == []
    assert validate_options("random_number", {"min": 0, "max": 9.5, "decimals": 1}) == []
    assert validate_options("static", {"value": "x"}) == []
    assert "unknown masking strategy" in validate_options("scramble", {})[0]
    assert "unknown option 'lenght'" in validate_options("anonymize", {"lenght": 3})[0]
    assert "required" in validate_options("static", {})[0]
    assert len(validate_options("random_date", {})) == 2
    assert "after" in validate_options("random_date", {"start": "2001-01-01", "end": "2000-01-01"})[0]
    assert "start: input should be a valid" in validate_options("random_date", {"start": "x", "end": "2000-01-01"})[0]
    assert "greater" in validate_options("random_number", {"min": 5, "max": 1})[0]
    assert "min must be a number" in validate_options("random_number", {"min": "1", "max": 2})[0]
    assert "decimals" in validate_options("random_number", {"min": 1, "max": 2, "decimals": -1})[0]
    assert "library" in validate_options("pseudonymize", {"library": "pokemon"})[0]
    assert "field_length" in validate_options("hash", {"field_length": 0})[0]


def test_validate_field_type():
    assert validate_field_type("anonymize", "Email") == []
    assert validate_field_type("random_date", "datetime") == []
    assert "identifiers" in validate_field_type("anonymize", "reference")[0]
    assert "not valid for string" in validate_field_type("random_date", "string")[0]
    assert "not valid for date" in validate_field_type("anonymize", "date")[0]
    assert validate_field_type("nullify", "boolean")  # a checkbox cannot be null
    assert "cannot be masked" in validate_field_type("hash", "base64")[0]
    assert "not valid" in validate_field_type("static", "date", {"value": "soon"})[0]
    assert "no integer" in validate_field_type("random_number", "int", {"min": 1.2, "max": 1.8})[0]
    with pytest.raises(ValueError, match="not valid for phone"):
        mask("pseudonymize", "+1 555", "phone")
    with pytest.raises(ValueError, match="key"):
        mask("hash", "x", key=b"")


# ----------------------------------------------------------------------------------------------- Masker


FIELD_TYPES = {"FirstName": "string", "LastName": "string", "Email": "email", "Phone": "phone",
               "Birthdate": "date", "Title": "string", "NumberOfChildren__c": "double"}


def test_masker_masks_only_the_chosen_fields():
    masker = Masker(
        {"FirstName": "anonymize", "Email": ("hash", {}), "Phone": ("nullify", None),
         "Birthdate": ("random_date", {"start": "1950-01-01", "end": "2000-12-31"}),
         "Title": ("static", {"value": "Redacted"})},
        FIELD_TYPES, KEY, field_lengths={"FirstName": 4},
    )
    record = {"Id": RECORD, "FirstName": "Blake", "LastName": "Smith", "Email": "blake@example.com",
              "Phone": "+1 555 0100", "Birthdate": "1980-05-17", "Title": "CEO"}
    masked = masker.mask_record(record)
    assert list(masked) == ["Id", "FirstName", "Email", "Phone", "Birthdate", "Title"] == list(masker.columns)
    assert masked["Id"] == RECORD and "LastName" not in masked
    assert re.fullmatch(r"[A-Za-z0-9]{4}", masked["FirstName"])
    assert is_valid_email(masked["Email"]) and masked["Phone"] is None and masked["Title"] == "Redacted"
    assert DATE.fullmatch(masked["Birthdate"])
    # A retried task (a new Masker, same key) writes the same reproducible values.
    again = Masker({"Birthdate": ("random_date", {"start": "1950-01-01", "end": "2000-12-31"})}, FIELD_TYPES, KEY)
    assert again.mask_record(record)["Birthdate"] == masked["Birthdate"]
    row = [to_bulk_csv_value(masked[column]) for column in masker.columns]  # the Bulk update CSV row
    assert row[0] == RECORD and row[3] == "#N/A" and row[5] == "Redacted"


def test_masker_reads_connect_mirror_rows():
    masker = Masker({"Email": ("hash", {})}, {"email": "email"}, KEY)
    masked = masker.mask_record({"sfid": RECORD, "email": "blake@example.com"})
    assert masked == {"Id": RECORD, "Email": mask("hash", "blake@example.com", "email")}
    with pytest.raises(ValueError, match="Id"):
        masker.mask_record({"email": "x@y.com"})


def test_masker_reports_every_problem_at_once():
    with pytest.raises(ValueError) as info:
        Masker(
            {"FirstName": "scramble", "Birthdate": "anonymize", "Missing__c": "hash",
             "NumberOfChildren__c": ("random_number", {"min": 3})},
            FIELD_TYPES, KEY,
        )
    message = str(info.value)
    for fragment in ("FirstName: unknown masking strategy", "Birthdate: anonymize: not valid for date",
                     "Missing__c: no field type", "NumberOfChildren__c: random_number: option 'max' is required"):
        assert fragment in message


# --------------------------------------------------------------------------------------------- registry


# One original value of each type a strategy may claim, as the org or the Connect mirror returns it.
SAMPLES = {
    "string": "Kelsey Smith", "textarea": "Called on Monday", "encryptedstring": "1234-5678", "combobox": "Other",
    "url": "https://example.com/kelsey", "email": "kelsey@example.com", "phone": "+1 (555) 010-9999",
    "date": "1980-05-17", "datetime": "2020-01-01T10:00:00.000Z", "int": 42, "long": 4200000000, "double": 4.5,
    "currency": Decimal("12.50"), "percent": 50, "picklist": "Web", "multipicklist": "A;B", "time": "10:00:00.000Z",
    "boolean": True,
}
_NUMBERS = {"double", "currency", "percent"}
STATIC_VALUES = {"boolean": False, "date": "1900-01-01", "datetime": "2000-01-01", "time": "00:00:00",
                 "email": "redacted@example.invalid", **dict.fromkeys(_NUMBERS | {"int", "long"}, 0)}


def _valid_for(ftype: str, value) -> bool:
    """Whether Salesforce would take ``value`` for a field of ``ftype`` in a Bulk update (None: set to null)."""
    if value is None:
        return ftype != "boolean"
    if ftype == "boolean":
        return isinstance(value, bool)
    if ftype in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if ftype in _NUMBERS:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if ftype == "date":
        return bool(DATE.fullmatch(value))
    if ftype == "datetime":
        return bool(DATETIME.fullmatch(value))
    if ftype == "email":
        return is_valid_email(value)
    return isinstance(value, str) and value != ""


def _example_options(entry) -> dict:
    """The strategy's required options, from the examples its options model gives them."""
    return {name: field.examples[0] for name, field in entry.options.model_fields.items() if field.is_required()}


@pytest.mark.parametrize("name", list(masking.STRATEGIES))
def test_every_strategy_writes_a_valid_value_for_every_type_it_claims(name):
    """A registry entry is the whole strategy: its options model names it, its function masks, and every type it
    claims gets a value Salesforce accepts; every other maskable type is refused up front."""
    entry = masking.STRATEGIES[name]
    assert entry.options.model_fields["strategy"].default == name
    assert entry.field_types and entry.field_types <= masking.MASKABLE_TYPES <= set(SAMPLES)
    options = _example_options(entry)
    assert validate_options(name, options) == []
    for ftype in sorted(entry.field_types):
        if name == "static":  # a static value must itself suit the field
            options = {"value": STATIC_VALUES.get(ftype, "REDACTED")}
        masker = Masker({"F": (name, options)}, {"F": ftype}, KEY, field_lengths={"F": 40})
        masked = masker.mask_record({"Id": RECORD, "F": SAMPLES[ftype]})["F"]
        assert _valid_for(ftype, masked), (ftype, masked)
        assert to_bulk_csv_value(masked)
    for ftype in sorted(masking.MASKABLE_TYPES - entry.field_types):
        assert f"{name}: not valid for {ftype} fields" in validate_field_type(name, ftype, options)[0]
        with pytest.raises(ValueError, match="not valid for"):
            Masker({"F": (name, options)}, {"F": ftype}, KEY)
