"""The policy file contract: the examples load, every mistake is reported as `<file>: <key>: <reason>`,
one bad file never hides the others, and the checks against describe catch what only the org knows."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pytest
from psycopg import sql
from pydantic import TypeAdapter, ValidationError

from retention import masking, transforms
from retention import policy as policy_module
from retention.policy import (
    MaskStrategy,
    Policy,
    PolicyError,
    Transform,
    check_against_describe,
    load_policies,
    load_policy,
    parse_policy,
)
from retention.soql_filter import Comparison, SubSelect, Value
from sandbox.objects import get_object

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "include" / "policies"

VALID = """\
id: inactive_contacts
description: Contacts untouched for two years
owner: privacy-team
object: Contact
schedule: "0 3 * * *"
start_date: 2025-01-01
select:
  date_field: LastModifiedDate
  older_than_days: 730
  where: "LeadSource != 'Partner Referral'"
retain:
  table: contact
  fields:
    LastName: keep
    Email: email_domain
    Birthdate: year
    MailingCountry: keep
action: delete
"""

MASK = VALID.replace("action: delete", "action: mask\nmask:\n  FirstName: anonymize\n  Phone: nullify")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, name: str = "bad.yaml") -> PolicyError:
    path = write(tmp_path, name, text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    return err.value


def describe(name: str) -> dict:
    return get_object(name).describe("66.0")


HOLDS = {"PrivacyHold": get_object("PrivacyHold").describe("66.0")}


# ----------------------------------------------------------------------------------------- examples


def test_every_example_loads_and_passes_describe():
    policies, errors = load_policies(EXAMPLES)
    assert errors == {}
    assert [p.id for p in policies] == [
        "accounts_bulk_api", "closed_cases_hard_delete", "inactive_contacts", "stale_leads_mask",
    ]
    for policy in policies:
        others = {name: describe(name) for name in policy.related_fields()}
        assert check_against_describe(policy, describe(policy.object), others) == [], policy.id


def test_examples_show_one_thing_each():
    by_id = {p.id: p for p in load_policies(EXAMPLES)[0]}
    contacts = by_id["inactive_contacts"]
    assert contacts.dag_id == "retention__inactive_contacts"
    assert (contacts.action, contacts.schedule, contacts.select.older_than_days) == ("delete", "0 3 * * *", 730)
    assert contacts.select.filter.items[0] == Comparison(
        "LeadSource", "!=", Value("string", "Partner Referral", "Partner Referral")
    )
    # Contacts with cases cannot be deleted: an anti-join leaves them out.
    assert contacts.select.filter.items[1].value == SubSelect("ContactId", "Case", None)
    assert {k: str(v) for k, v in contacts.retain.fields.items()} == {
        "LastName": "keep", "Email": "email_domain", "Birthdate": "year", "MailingCountry": "keep",
    }
    leads = by_id["stale_leads_mask"]
    assert leads.action == "mask" and leads.schedule == "@weekly"
    assert {k: v.strategy for k, v in leads.mask.items()} == {
        "FirstName": "anonymize", "LastName": "pseudonymize", "Email": "hash", "Phone": "nullify",
    }
    assert leads.select.where == "IsConverted = false"  # a converted lead is read only
    cases = by_id["closed_cases_hard_delete"]
    # A PrivacyHold cannot name a Case: the cases of held contacts are kept out by the filter instead.
    assert cases.action == "hard_delete" and not cases.select.exclude_privacy_holds
    assert cases.related_fields() == {"PrivacyHold": {"ReferenceRecordId", "IsActive"}}
    assert cases.retain.fields["Subject"] == Transform(kind="truncate", n=40)
    accounts = by_id["accounts_bulk_api"]
    assert accounts.source == "salesforce_api" and accounts.schedule is None
    assert contacts.source == "heroku_connect" and contacts.guards.max_records_per_run == 50_000


def test_default_folder_and_airflow_config(monkeypatch, tmp_path):
    """Without the setting, the Airflow project's include/policies, beside its dags folder (not the package's)."""
    monkeypatch.delenv("AIRFLOW__RETENTION__POLICIES_DIR", raising=False)
    monkeypatch.delenv("RETENTION_POLICIES_DIR", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    assert policy_module.default_policies_dir() == EXAMPLES
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(tmp_path / "project" / "dags"))
    assert policy_module.default_policies_dir() == tmp_path / "project" / "include" / "policies"
    write(tmp_path, "a.yml", VALID)
    monkeypatch.setenv("AIRFLOW__RETENTION__POLICIES_DIR", str(tmp_path))
    policies, errors = load_policies()
    assert [p.id for p in policies] == ["inactive_contacts"] and errors == {}


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policies(tmp_path / "nope")


# --------------------------------------------------------------------------------------- the model


def test_defaults():
    p = parse_policy(VALID.encode())
    assert p.catchup is False
    assert p.select.exclude_privacy_holds is True
    assert p.guards.max_records_per_run == 50_000
    assert p.source == "heroku_connect"
    assert p.mask is None
    assert p.start_date == date(2025, 1, 1)


def test_transform_forms():
    assert Transform.model_validate("truncate:3") == Transform(kind="truncate", n=3)
    assert Transform.model_validate({"transform": "truncate", "length": 3}) == Transform(kind="truncate", n=3)
    assert Transform.model_validate("last:4") == Transform(kind="last", n=4)
    assert Transform.model_validate(None) == Transform(kind="null")  # YAML `Field: null`
    assert Transform.model_validate("null") == Transform(kind="null")
    assert [str(Transform.model_validate(t)) for t in ("keep", "hash", "month", "last:4")] == [
        "keep", "hash", "month", "last:4",
    ]


def mask_strategy(data):
    return TypeAdapter(MaskStrategy).validate_python(data)


def test_mask_strategy_forms():
    assert mask_strategy("nullify").options == {}
    static = mask_strategy({"strategy": "static", "value": "REDACTED"})
    assert static.options == {"value": "REDACTED"}
    dates = mask_strategy({"strategy": "random_date", "start": "1950-01-01", "end": date(2000, 12, 31)})
    assert dates.options == {"start": date(1950, 1, 1), "end": date(2000, 12, 31)}
    numbers = mask_strategy({"strategy": "random_number", "min": 0, "max": 100, "decimals": 2})
    assert numbers.options == {"min": 0, "max": 100, "decimals": 2}
    names = mask_strategy({"strategy": "pseudonymize", "library": "last_name", "field_length": 20})
    assert names.options == {"library": "last_name", "field_length": 20}


def test_mask_options_are_what_the_masking_module_accepts():
    for strategy in (
        {"strategy": "static", "value": date(2000, 1, 1)},
        {"strategy": "random_number", "min": 1.5, "max": 2, "decimals": 1},
        {"strategy": "pseudonymize", "library": "city"},
        {"strategy": "hash", "field_length": 64},
    ):
        parsed = mask_strategy(strategy)
        assert masking.validate_options(parsed.strategy, parsed.options) == [], strategy


@pytest.mark.parametrize("spec", ["truncate", "truncate:0", "last:x", "last:-1", "year:2", "md5", "keep:", ""])
def test_transform_rejects(spec):
    with pytest.raises(ValidationError):
        Transform.model_validate(spec)


@pytest.mark.parametrize("name", list(transforms.KINDS))
def test_every_registered_transform_is_accepted_by_the_policy_and_checked(name):
    """A transform is one entry in retention.transforms: the policy accepts it by that name, the describe check
    applies its field types, and subset builds its SQL from what the policy holds."""
    kind = transforms.KINDS[name]
    written = f"{name}:4" if kind.sized else name
    policy = parse_policy(VALID.replace("Email: email_domain", f"Email: {written}").encode())
    transform = policy.retain.fields["Email"]
    assert (transform.kind, transform.spec, str(transform)) == (name, kind, written)
    problems = check_against_describe(policy, describe("Contact"), HOLDS)  # Email is an email field
    if kind.field_types is None or "email" in kind.field_types:
        assert problems == []
    else:
        assert problems == [f"retain.fields.Email: {written} needs {kind.needs}; 'Email' is email"]
    assert transforms.expression(transform.kind, transform.n, sql.Identifier("s", "email")).as_string(None)


@pytest.mark.parametrize("name", list(masking.STRATEGIES))
def test_every_registered_strategy_is_accepted_by_the_policy_and_applied(name):
    """A strategy is one entry in retention.masking: the policy accepts it by that name with the options its model
    declares, the describe check passes it on a field it suits, and the Masker built from the policy applies it."""
    entry = masking.STRATEGIES[name]
    required = {key: field.examples[0] for key, field in entry.options.model_fields.items() if field.is_required()}
    written = ", ".join([f"strategy: {name}", *(f"{key}: {value}" for key, value in required.items())])
    policy = parse_policy(MASK.replace("FirstName: anonymize", f"Masked__c: {{{written}}}").encode())
    strategy = policy.mask["Masked__c"]
    assert isinstance(strategy, entry.options) and strategy.strategy == name
    ftype = next(t for t in ("string", "date", "double") if t in entry.field_types)
    contact = describe("Contact")
    field = {"name": "Masked__c", "type": ftype, "updateable": True, "nillable": True, "length": 40}
    assert check_against_describe(policy, {**contact, "fields": [*contact["fields"], field]}, HOLDS) == []
    # As delete_or_mask builds it from the policy.
    masker = masking.Masker({f: (s.strategy, s.options) for f, s in policy.mask.items()},
                            {"Masked__c": ftype, "Phone": "phone"}, b"key")
    original = {"string": "Kelsey", "date": "1980-05-17", "double": 4.5}[ftype]
    masked = masker.mask_record({"Id": "003000000000001AAA", "Masked__c": original, "Phone": "+1 555 0100"})
    assert masked["Masked__c"] != original and masked["Phone"] is None


def test_schedule_presets_cron_and_null():
    for schedule in ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "*/15 2-4 1,15 * MON-FRI"):
        assert parse_policy(VALID.replace('"0 3 * * *"', f'"{schedule}"').encode()).schedule == schedule
    assert parse_policy(VALID.replace('"0 3 * * *"', "null").encode()).schedule is None


def test_referenced_fields():
    p = parse_policy(MASK.replace("'Partner Referral'", "'x' AND (HasOptedOutOfEmail = false)").encode())
    assert p.referenced_fields() == {
        "LastModifiedDate", "LastName", "Email", "Birthdate", "MailingCountry", "FirstName", "Phone",
        "LeadSource", "HasOptedOutOfEmail",
    }


def test_source_hash_and_path(tmp_path):
    path = write(tmp_path, "p.yaml", VALID)
    first = load_policy(path)
    assert first.path == path
    assert first.source_hash == hashlib.sha256(VALID.encode()).hexdigest()
    path.write_text(VALID + "# a comment changes the file, so it changes the evidence\n")
    second = load_policy(path)
    assert second.source_hash != first.source_hash
    assert len(second.source_hash) == 64


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (VALID + "schedul: '@daily'\n", "schedul: unknown key (did you mean schedule?)"),
        (VALID.replace("older_than_days", "older_than_dayz"), "select.older_than_dayz: unknown key (did you mean"),
        (VALID.replace("id: inactive_contacts", "id: Inactive-Contacts"), "id: 'Inactive-Contacts' must be"),
        (
            VALID.replace("Email: email_domain", "Email: domain"),
            "retain.fields.Email: unknown transform 'domain' (expected keep, email_domain, year, month, truncate:N, "
            "last:N, hash, null)",
        ),
        (VALID.replace("Email: email_domain", "Email: truncate:0"), "retain.fields.Email: truncate:N needs N >= 1"),
        (VALID.replace("Email: email_domain", "Email: truncate"), "retain.fields.Email: truncate needs a length"),
        (VALID.replace("Email: email_domain", "Email: keep:3"), "retain.fields.Email: keep takes no length"),
        (
            VALID.replace("Email: email_domain", "Email: {transform: last, length: x}"),
            "retain.fields.Email: last length must be a whole number >= 1, got 'x'",
        ),
        (VALID.replace("    LastName: keep", "    Id: keep"), "retain.fields.Id: Id is always kept (as sfid)"),
        (VALID.replace("    LastName: keep", "    Last Name: keep"), "retain.fields.Last Name: 'Last Name' is not"),
        (VALID.replace("    LastName: keep", "    lastname: hash\n    LastName: keep"), "retain.fields: lastname and"),
        (VALID.replace("table: contact", "table: Contact"), "retain.table: 'Contact' is not a table name"),
        (VALID.replace("table: contact", "table: " + "t" * 64), "retain.table: table name is 64 characters"),
        (VALID + "mask:\n  Email: hash\n", "mask: only allowed with action: mask (action is delete)"),
        (VALID.replace("action: delete", "action: mask"), "mask: action: mask needs a mask mapping"),
        (VALID.replace("action: delete", "action: mask\nmask: {}"), "mask: must name at least one field"),
        (VALID.replace("action: delete", "action: purge"), "action: input should be 'delete', 'hard_delete' or"),
        (MASK.replace("anonymize", "static"), "mask.FirstName: static needs value: {strategy: static"),
        (MASK.replace("anonymize", "scramble"), "mask.FirstName: unknown mask strategy 'scramble'"),
        (
            MASK.replace("anonymize", "{strategy: random_date, start: 2001-01-01, end: 2000-01-01}"),
            "mask.FirstName: random_date start 2001-01-01 is after end 2000-01-01",
        ),
        (MASK.replace("anonymize", "{strategy: random_date, start: 2001-01-01}"), "random_date needs end"),
        (
            MASK.replace("anonymize", "{strategy: random_number, min: 5, max: 1}"),
            "mask.FirstName: random_number min 5 is greater than max 1",
        ),
        (MASK.replace("anonymize", "{strategy: hash, value: x}"), "option 'value' does not apply to hash"),
        (MASK.replace("anonymize", "{strategy: pseudonymize, library: pets}"), "unknown pseudonymize library 'pets'"),
        (MASK.replace("anonymize", "{strategy: hash, field_length: 0}"), "mask.FirstName.field_length: input should"),
        (MASK.replace("anonymize", "{strategy: nullify, lenght: 3}"), "mask.FirstName.lenght: unknown key"),
        (MASK.replace("FirstName: anonymize", "Id: anonymize"), "mask.Id: Id is always kept"),
        (VALID.replace('"0 3 * * *"', '"0 3 * *"'), "schedule: '0 3 * *' is not a 5-field cron expression"),
        (VALID.replace('"0 3 * * *"', '"0 25 * * *"'), "schedule: '0 25 * * *' is not a 5-field cron"),
        (VALID.replace('"0 3 * * *"', '"0 0 3 * * *"'), "is not a 5-field cron expression"),
        (VALID.replace('"0 3 * * *"', '"@daly"'), "schedule: unknown preset '@daly'"),
        (VALID.replace('schedule: "0 3 * * *"\n', ""), "schedule: required key is missing"),
        (VALID.replace("owner: privacy-team", "owner: ' '"), "owner: must not be empty"),
        (VALID.replace("object: Contact", "object: 'Contact; DROP'"), "object: 'Contact; DROP' is not a Salesforce"),
        (VALID.replace("older_than_days: 730", "older_than_days: 0"), "select.older_than_days: input should be"),
        (VALID.replace("older_than_days: 730", "older_than_days: soon"), "got 'soon'"),
        (VALID.replace("start_date: 2025-01-01", "start_date: someday"), "start_date: input should be a valid date"),
        (VALID + "guards:\n  max_records_per_run: 0\n", "guards.max_records_per_run: input should be greater"),
        (VALID.replace("action: delete", "  keep_days: 0\naction: delete"), "retain.keep_days: input should be great"),
        (VALID.replace("action: delete", "  keep_days: ever\naction: delete"), "retain.keep_days: input should be a"),
        (VALID + "source: rest\n", "source: input should be 'heroku_connect' or 'salesforce_api', got 'rest'"),
        (
            VALID.replace("'Partner Referral'", "'Partner' AND A = 1 OR B = 2"),
            "select.where: column 35: OR after AND: mixing AND and OR needs parentheses",
        ),
        (
            VALID.replace("'Partner Referral'", "'x' OR 1=1 --"),
            "select.where: column 22: expected a field name, found '1'",
        ),
    ],
)
def test_error_names_file_key_and_reason(tmp_path, text, line):
    err = error_of(tmp_path, text)
    assert any(msg.startswith("bad.yaml: ") or str(tmp_path) in msg for msg in str(err).splitlines())
    assert line in str(err), str(err)
    assert err.path == tmp_path / "bad.yaml"


def test_error_message_shape(tmp_path):
    err = error_of(tmp_path, VALID.replace("Email: email_domain", "Email: domain").replace("owner: privacy-team\n", ""))
    assert str(err).splitlines() == [
        f"{tmp_path}/bad.yaml: owner: required key is missing",
        f"{tmp_path}/bad.yaml: retain.fields.Email: unknown transform 'domain' (expected keep, email_domain, year, "
        "month, truncate:N, last:N, hash, null)",
    ]
    assert err.problems[0] == ("owner", "required key is missing")


def test_paths_in_the_repo_read_as_in_a_pull_request(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    err = PolicyError(EXAMPLES / "bad.yaml", [("retain.fields.Email", "unknown transform 'domain'")])
    assert str(err) == "include/policies/bad.yaml: retain.fields.Email: unknown transform 'domain'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID.replace("  older_than_days: 730", "  older_than_days: 730\n x: [1,"), "line 10, column 2: invalid YAML"),
        (VALID.replace('"0 3 * * *"', "* * * * *"), "line 5, column 12: invalid YAML"),  # unquoted *: an alias
        (
            VALID.replace("    Birthdate: year", "    Birthdate: year\n    LastName: hash"),
            "line 17, column 5: invalid YAML: duplicate key 'LastName' (first on line 14)",
        ),
        ("", "bad.yaml: file is empty"),
        ("# only a comment\n", "bad.yaml: file is empty"),
        ("- id: x\n", "bad.yaml: top level must be a mapping of policy keys, got list"),
        ("just text\n", "bad.yaml: top level must be a mapping of policy keys, got str"),
    ],
)
def test_yaml_problems_name_the_line(tmp_path, text, expected):
    assert expected in str(error_of(tmp_path, text))


def test_bad_file_does_not_stop_the_others(tmp_path):
    write(tmp_path, "a_good.yaml", VALID)
    write(tmp_path, "b_bad.yaml", VALID.replace("inactive_contacts", "broken").replace("keep", "kept"))
    write(tmp_path, "c_syntax.yml", "id: [\n")
    write(tmp_path, "d_good.yml", MASK.replace("inactive_contacts", "masked").replace("table: contact", "table: m"))
    write(tmp_path, "notes.md", "not a policy")
    write(tmp_path, ".#editor_temp.yaml", "garbage: [")
    policies, errors = load_policies(tmp_path)
    assert [p.id for p in policies] == ["inactive_contacts", "masked"]
    assert list(errors) == [tmp_path / "b_bad.yaml", tmp_path / "c_syntax.yml"]
    assert "retain.fields.LastName: unknown transform 'kept'" in str(errors[tmp_path / "b_bad.yaml"])
    assert "c_syntax.yml: line 2" in str(errors[tmp_path / "c_syntax.yml"])


def test_two_policies_retaining_into_one_cache_table_are_both_refused(tmp_path):
    """Records are keyed by id in a cache table: a second policy there would find the first one's records already
    done and never act on them, and the columns of both would mix. Neither loads; the others do."""
    write(tmp_path, "a.yaml", VALID)
    write(tmp_path, "b.yaml", VALID.replace("id: inactive_contacts", "id: other_contacts"))
    write(tmp_path, "c.yaml", VALID.replace("id: inactive_contacts", "id: own_table").replace(
        "table: contact", "table: own_contact"))
    policies, errors = load_policies(tmp_path)
    assert [p.id for p in policies] == ["own_table"]
    assert str(errors[tmp_path / "a.yaml"]) == (
        f"{tmp_path}/a.yaml: retain.table: cache table 'contact' is also retained into by policy other_contacts "
        f"({tmp_path}/b.yaml); each policy needs its own table (records are keyed by id, so two policies would take "
        "each other's records for their own)")
    assert "b.yaml: retain.table: cache table 'contact' is also retained into by policy inactive_contacts" in str(
        errors[tmp_path / "b.yaml"])


def test_duplicate_ids_name_both_files_and_load_neither(tmp_path):
    write(tmp_path, "a.yaml", VALID)
    write(tmp_path, "b.yaml", VALID.replace("730", "365"))
    write(tmp_path, "c.yaml", VALID.replace("inactive_contacts", "other"))
    policies, errors = load_policies(tmp_path)
    assert [p.id for p in policies] == ["other"]
    assert set(errors) == {tmp_path / "a.yaml", tmp_path / "b.yaml"}
    a, b = str(errors[tmp_path / "a.yaml"]), str(errors[tmp_path / "b.yaml"])
    assert a == (
        f"{tmp_path}/a.yaml: id: duplicate id 'inactive_contacts', also used by {tmp_path}/b.yaml; ids must be unique"
    )
    assert "b.yaml: id: duplicate id 'inactive_contacts', also used by" in b and "a.yaml; ids" in b


def test_unreadable_path(tmp_path):
    with pytest.raises(PolicyError, match="cannot read file"):
        load_policy(tmp_path / "missing.yaml")


def test_policy_is_immutable():
    p = parse_policy(VALID.encode())
    with pytest.raises(ValueError):
        p.action = "hard_delete"  # type: ignore[misc]


def test_policy_built_in_code_has_a_stable_hash():
    p1 = Policy.model_validate(parse_policy(VALID.encode()).model_dump())
    p2 = Policy.model_validate(parse_policy(VALID.encode()).model_dump())
    assert p1.path is None and p1.source_hash == p2.source_hash


# ----------------------------------------------------------------------------------------- describe


def test_check_against_describe_flags_problems():
    long_phone = "9" * 41
    text = f"""\
id: broken
description: every describe problem at once
owner: privacy-team
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: LastName
  older_than_days: 30
  where: "Nope = 1 AND CreatedDate < 2024-01-01"
retain:
  table: contact
  fields:
    Missing__c: keep
    Phone: email_domain
    LastName: year
    Birthdate: truncate:4
    Email: email_domain
action: mask
mask:
  Name: anonymize
  LastName: nullify
  Birthdate: hash
  Email: {{strategy: random_number, min: 1, max: 2}}
  Phone: {{strategy: static, value: '{long_phone}'}}
  HasOptedOutOfEmail: {{strategy: static, value: 1}}
  Unknown: nullify
"""
    problems = check_against_describe(parse_policy(text.encode()), describe("Contact"), HOLDS)
    assert problems[:9] == [
        "select.date_field: 'LastName' is string, not a date or datetime",
        "select.where: unknown field 'Nope' on Contact",
        "select.where: 'CreatedDate' is a datetime: write 2024-01-01T00:00:00Z, not a date",
        "retain.fields.Missing__c: unknown field 'Missing__c' on Contact",
        "retain.fields.Phone: email_domain needs an email or string field; 'Phone' is phone",
        "retain.fields.LastName: year needs a date or datetime field; 'LastName' is string",
        "retain.fields.Birthdate: truncate:4 needs a text field; 'Birthdate' is date",
        "mask.Name: 'Name' is not updateable, so it cannot be masked",
        "mask.LastName: nullify needs a nillable field; 'LastName' is required",
    ]
    # Which strategy suits which field type is retention.masking's rule; here only that each is reported.
    delegated = [p.split(": ", 2)[:2] for p in problems[9:13]]
    assert delegated == [
        ["mask.Birthdate", "hash"],
        ["mask.Email", "random_number"],
        ["mask.Phone", "static"],
        ["mask.HasOptedOutOfEmail", "static"],
    ]
    assert problems[13:] == ["mask.Unknown: unknown field 'Unknown' on Contact"]


def test_check_against_describe_is_case_insensitive_and_checks_the_object():
    p = parse_policy(VALID.replace("LastName: keep", "lastname: keep").encode())
    assert check_against_describe(p, describe("Contact"), HOLDS) == []
    problems = check_against_describe(p, describe("Lead"), HOLDS)
    assert problems[0] == "object: describe is for Lead, the policy is for Contact"
    assert "retain.fields.Birthdate: unknown field 'Birthdate' on Lead" in problems


def test_check_against_describe_refuses_delete_when_not_deletable():
    p = parse_policy(VALID.encode())
    undeletable = {**describe("Contact"), "deletable": False}
    assert check_against_describe(p, undeletable, HOLDS) == ["action: Contact records are not deletable"]


def test_alerts_key_is_validated_with_file_key_and_reason(tmp_path):
    from retention.policy import PolicyError, load_policy

    base = (EXAMPLES / "inactive_contacts.yaml").read_text()
    good = tmp_path / "good.yaml"
    good.write_text(base + "alerts:\n  email: [privacy@example.com]\n  slack_webhook_conn_id: slack_retention\n")
    alerts = load_policy(good).alerts
    assert alerts.email == ["privacy@example.com"] and alerts.when == ["validation_failed", "task_failed"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "alerts:\n  email: [not-an-address]\n  when: [sometimes]\n")
    with pytest.raises(PolicyError) as err:
        load_policy(bad)
    text = str(err.value)
    assert "bad.yaml: alerts.email: " in text and "not-an-address" in text and "alerts.when" in text


def test_privacy_holds_need_the_privacy_center_objects_and_a_holdable_object():
    """PrivacyHold exists only for users with the Privacy Center license and "Manage Privacy Hold", and its
    ReferenceRecordId "Refers To Account, Contact, Individual, Lead, User" (Object Reference: PrivacyHold):
    https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_privacyhold.htm
    """
    contacts = parse_policy(VALID.encode())
    assert contacts.related_fields() == {"PrivacyHold": {"ReferenceRecordId", "IsActive", "EndDate"}}
    problems = check_against_describe(contacts, describe("Contact"), {"PrivacyHold": None})
    assert len(problems) == 1 and "PrivacyHold is not available to the API user" in problems[0]
    assert "exclude_privacy_holds: false" in problems[0]
    cases = parse_policy(VALID.replace("object: Contact", "object: Case").replace("LastName: keep", "Subject: keep")
                         .replace("Birthdate: year", "ClosedDate: year").encode())
    problems = check_against_describe(cases, describe("Case"), HOLDS)
    assert ["select.exclude_privacy_holds: a PrivacyHold cannot refer to Case records "
                        "(ReferenceRecordId refers to Account, Contact, Individual, Lead, User); set "
                        "exclude_privacy_holds: false"] == [p for p in problems if "exclude_privacy_holds" in p]
    no_holds = "  older_than_days: 730\n  exclude_privacy_holds: false"
    unheld = parse_policy(VALID.replace("  older_than_days: 730", no_holds).encode())
    assert unheld.related_fields() == {}


CASCADE = """
cascade:
  - object: Contact
    relationship: AccountId
    retain:
      table: account_contact
      fields: {LastName: keep, Email: email_domain}
  - object: Opportunity
    relationship: AccountId
    retain:
      table: account_opportunity
      fields: {Name: keep, Amount: keep}
"""
ACCOUNTS = (EXAMPLES / "accounts_bulk_api.yaml").read_text()


def _accounts(extra: str = CASCADE) -> str:
    start = ACCOUNTS.index("\ncascade:") if "\ncascade:" in ACCOUNTS else len(ACCOUNTS)
    end = ACCOUNTS.find("\nsource:")
    return ACCOUNTS[:start] + "\n" + extra + ACCOUNTS[end:] if start < end else ACCOUNTS[:start] + extra


def test_cascade_children_are_checked_against_the_parents_describe():
    """A child belongs under cascade: only when deleting the parent deletes it: describe's childRelationships
    entry has cascadeDelete true (SOAP API Developer Guide, DescribeSObjectResult, ChildRelationship)."""
    policy = parse_policy(_accounts().encode())
    assert [c.object for c in policy.cascade] == ["Contact", "Opportunity"]
    others = {name: describe(name) for name in policy.related_fields()}
    assert check_against_describe(policy, describe("Account"), others) == []
    cases = CASCADE.replace("Opportunity", "Case").replace("Amount: keep", "Subject: keep")
    problems = check_against_describe(parse_policy(_accounts(cases).encode()), describe("Account"),
                                      {**others, "Case": describe("Case")})
    assert problems == ["cascade[1]: deleting Account does not delete Case records through AccountId (describe "
                        "childRelationships); list only children a delete takes with it"]
    wrong_field = CASCADE.replace("Amount: keep", "Nope: keep")
    problems = check_against_describe(parse_policy(_accounts(wrong_field).encode()), describe("Account"), others)
    assert problems == ["cascade[1].retain.fields.Nope: unknown field 'Nope' on Opportunity"]


@pytest.mark.parametrize(("extra", "message"), [
    (CASCADE.replace("account_opportunity", "account_contact"), "used by more than one cascade child"),
    (CASCADE.replace("account_opportunity", "account"), "is the parent's table"),
    (CASCADE.replace("object: Opportunity", "object: Contact"), "Contact.AccountId is listed twice"),
])
def test_cascade_tables_and_children_are_distinct(extra, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(_accounts(extra).encode())
    err = info.value
    assert any(key == "cascade" and message in reason for key, reason in err.problems), err.problems


def test_cascade_is_refused_with_mask():
    text = (EXAMPLES / "stale_leads_mask.yaml").read_text() + CASCADE.replace("AccountId", "ConvertedAccountId")
    with pytest.raises(PolicyError) as info:
        parse_policy(text.encode())
    err = info.value
    assert ("cascade", "only for action: delete or hard_delete (masking a parent takes no child with it)") in \
        err.problems


def test_cascade_exempt_names_a_cascading_relationship_and_is_not_checked():
    """A reviewed exception: children in an exempt relationship may go with their parent unretained, so they do
    not keep it back; the name must be a relationship describe marks cascadeDelete."""
    from retention import cascade

    contacts_only = ACCOUNTS[:ACCOUNTS.index("  - object: Opportunity")] + ACCOUNTS[ACCOUNTS.index("\nsource:"):]
    policy = parse_policy(contacts_only.encode())
    account = describe("Account")
    assert [r.name for r in cascade.undeclared(policy, account)] == ["Opportunities"]
    exempt = parse_policy((contacts_only + "cascade_exempt: [Opportunities]\n").encode())
    assert cascade.undeclared(exempt, account) == []
    others = {name: describe(name) for name in exempt.related_fields()}
    assert check_against_describe(exempt, account, others) == []
    wrong = parse_policy((contacts_only + "cascade_exempt: [Cases]\n").encode())
    assert check_against_describe(wrong, account, others) == [
        "cascade_exempt: Account has no cascading child relationship named Cases"]

