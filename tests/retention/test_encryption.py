"""Encrypted retained fields (retention.encryption, a policy's ``retain.encrypt``).

The cipher itself: a round trip gives back every value exactly; an altered value, one moved to another record or
column, and a wrong key are refused, never decrypted to something else; a rotated key still reads older values.
The policy: only retained fields can be encrypted, and not a ``null`` or ``hash`` one. The store: a column keeps
one form (all ciphertext or all plain text). A real DAG run through the sandbox leaves no plaintext of an
encrypted field in the cache, ``python -m retention decrypt`` gives back exactly the org's values, and a run
without the key connection stops in its first task with the org untouched.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

import psycopg
import pytest

from retention.encryption import PREFIX, EncryptionError, Keyring, context, key_id, new_key
from retention.policy import PolicyError, parse_policy
from tests.policy_support import org_rows, policy_world, store_rows

KEY = base64.b64decode(new_key())
OTHER = base64.b64decode(new_key())
VALUES = ["Müller-Łukasz 👩‍⚕️", "", "line one\nline two\tand a tab", "x" * 5000, "o'Brien; DROP TABLE x; --"]


# ------------------------------------------------------------------------------------------- the cipher


def test_values_round_trip_exactly_and_never_show_in_their_ciphertext():
    ring = Keyring(KEY)
    for value in VALUES:
        where = context("contact", "LastName", "003000000000001AAA")
        token = ring.encrypt(value, where)
        assert token.startswith(f"{PREFIX}{key_id(KEY)}:")
        assert ring.decrypt(token, where) == value
        if value:
            assert value not in token and value.encode().hex() not in token
    # A fresh nonce each time: equal values do not show as equal ciphertext.
    assert ring.encrypt("Smith", "t.c:1") != ring.encrypt("Smith", "t.c:1")


def test_an_altered_or_moved_value_is_refused():
    ring = Keyring(KEY)
    where = context("contact", "Email", "003000000000001AAA")
    token = ring.encrypt("ada@example.com", where)
    head, body = token.rsplit(":", 1)
    raw = base64.urlsafe_b64decode(body)
    for n in (0, 15, len(raw) - 1):  # a bit of the nonce, of the ciphertext, of the tag
        flipped = raw[:n] + bytes([raw[n] ^ 1]) + raw[n + 1:]
        with pytest.raises(EncryptionError, match="does not authenticate"):
            ring.decrypt(f"{head}:{base64.urlsafe_b64encode(flipped).decode()}", where)
    # Copied onto another record, or into another column or table: refused, not read as that record's value.
    for elsewhere in (context("contact", "Email", "003000000000002AAA"), context("contact", "LastName",
                                                                                "003000000000001AAA"),
                      context("lead", "Email", "003000000000001AAA")):
        with pytest.raises(EncryptionError, match="another record or column"):
            ring.decrypt(token, elsewhere)
    for broken in (token[: len(PREFIX) + 12], "ada@example.com", token.rsplit(":", 1)[0] + ":!!!"):
        with pytest.raises(EncryptionError, match="malformed|not an encrypted value"):
            ring.decrypt(broken, where)


def test_a_wrong_key_is_refused_and_a_rotated_one_still_reads():
    token = Keyring(KEY).encrypt("Lovelace", "t.c:1")
    with pytest.raises(EncryptionError, match=f"written with key {key_id(KEY)}, which the connection does not "
                                              f"hold .it has {key_id(OTHER)}.") as err:
        Keyring(OTHER).decrypt(token, "t.c:1")
    assert base64.b64encode(KEY).decode() not in str(err.value)
    # Same id, other key (a forged id): authentication refuses it.
    forged = token.replace(key_id(KEY), key_id(OTHER))
    with pytest.raises(EncryptionError, match="does not authenticate"):
        Keyring(OTHER).decrypt(forged, "t.c:1")
    rotated = Keyring(OTHER, previous=(KEY,))
    assert rotated.decrypt(token, "t.c:1") == "Lovelace"
    assert rotated.encrypt("Lovelace", "t.c:1").startswith(f"{PREFIX}{key_id(OTHER)}:")


def test_a_keyring_never_shows_its_keys():
    ring = Keyring(KEY, previous=(OTHER,))
    assert KEY.hex() not in repr(ring) and str(KEY) not in repr(ring) and str(OTHER) not in repr(ring)


def test_the_key_connection_is_checked_with_a_clear_error():
    good = base64.b64encode(KEY).decode()
    ring = Keyring.from_connection(good, {"previous_keys": [base64.b64encode(OTHER).decode()]})
    assert (ring.current, ring.previous) == (KEY, (OTHER,))
    for password, extra, message in (
            (None, None, "connection 'retention_encryption_key' has no password"),
            ("not base64 at all!", None, "password is not base64"),
            (base64.b64encode(b"short").decode(), None, "password is 5 bytes; AES-256 needs 32"),
            (good, {"previous_keys": ["@@"]}, r"extra previous_keys\[0\] is not base64"),
            (good, {"previous_keys": {"a": 1}}, "previous_keys must be a list")):
        with pytest.raises(EncryptionError, match=message) as err:
            Keyring.from_connection(password, extra)
        assert good not in str(err.value)


# ------------------------------------------------------------------------------------------- the policy

EXAMPLE = Path(__file__).resolve().parents[2] / "include" / "policies" / "inactive_contacts.yaml"


def with_encrypt(line: str, *, email: str = "email_domain") -> bytes:
    text = EXAMPLE.read_text().replace("  keep_days: 2555", f"  encrypt: {line}\n  keep_days: 2555")
    return text.replace("Email: email_domain", f"Email: {email}").encode()


def test_a_policy_encrypts_only_retained_fields():
    policy = parse_policy(with_encrypt("[lastname, Email]"), "include/policies/x.yaml")
    assert policy.retain.encrypt == ["LastName", "Email"]  # spelled as retain.fields spells them
    for line, email, reason in (
            ("[Phone]", "email_domain", "'Phone' is not a retained field (retained: LastName, Email, Birthdate, "
                                        "MailingCountry); only what retain.fields keeps can be encrypted"),
            ("[LastNme]", "email_domain", "'LastNme' is not a retained field (did you mean LastName?)"),
            ("[Email, email]", "email_domain", "'Email' is listed twice"),
            ("[Email]", "null", "'Email' is retained as null: there is nothing to encrypt"),
            ("[Email]", "hash", "'Email' is retained as a keyed hash"),
            ("[Id]", "email_domain", "Id is always kept"),
            ("LastName", "email_domain", "valid list")):
        with pytest.raises(PolicyError) as err:
            parse_policy(with_encrypt(line, email=email), "include/policies/x.yaml")
        assert err.value.problems[0][0].startswith("retain.encrypt"), err.value
        assert reason in str(err.value) and str(err.value).startswith("include/policies/x.yaml: retain.encrypt")


# ------------------------------------------------------------------------------------------- the store


def test_a_column_is_all_ciphertext_or_all_plain_text(sandbox):
    """Encrypting a column that already holds plain values would leave them readable: refused; an empty one is
    switched to text and marked."""
    from retention.cache import ENCRYPTED_COMMENT, ensure_table
    from retention.policy import Transform
    from retention.steps.run import RetentionError

    fields = {"Birthdate": Transform(kind="year")}
    with sandbox.store_conn() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS cache")
        conn.execute("DROP TABLE IF EXISTS cache.encryption_switch")
        try:
            ensure_table(conn, "encryption_switch", fields, {"Birthdate": "date"})
            ensure_table(conn, "encryption_switch", fields, {"Birthdate": "date"}, encrypted=["Birthdate"])
            assert conn.execute("SELECT format_type(atttypid, atttypmod), col_description(attrelid, attnum) FROM "
                                "pg_attribute WHERE attrelid = 'cache.encryption_switch'::regclass AND attname = "
                                "'birthdate'").fetchone() == ("text", ENCRYPTED_COMMENT)
            ensure_table(conn, "encryption_switch", fields, {"Birthdate": "date"})  # back: still empty
            conn.execute("INSERT INTO cache.encryption_switch VALUES ('003000000000001AAA', 1980, 'p', 'r', now(), "
                         "'delete', 'done')")
            with pytest.raises(RetentionError, match=r"cache.encryption_switch.birthdate already holds values in "
                                                     "plain text from earlier runs"):
                ensure_table(conn, "encryption_switch", fields, {"Birthdate": "date"}, encrypted=["Birthdate"])
            assert conn.execute("SELECT birthdate FROM cache.encryption_switch").fetchone() == (1980,)
        finally:
            conn.execute("DROP TABLE IF EXISTS cache.encryption_switch")


def test_the_subset_is_encrypted_in_batches_bound_to_the_childs_table(sandbox, monkeypatch):
    """subset_table as a cascade child's subset is built: every batch encrypted, each value bound to the child's
    cache table and record, NULL left NULL, the fields not listed kept as they are."""
    from psycopg import sql

    from retention.policy import Transform
    from retention.steps import load

    monkeypatch.setattr(load, "ENCRYPT_BATCH", 3)  # 7 rows: three round trips
    ring = Keyring(KEY)
    # Temporary tables: this session's own, gone with it.
    staging, subset = sql.Identifier("pg_temp", "staged"), sql.Identifier("pg_temp", "subset")
    people = [(f"003{n:015d}", f"001{n:015d}", f"Name {n} ß", dt.date(1970 + n, 1, 2) if n % 3 else None,
               f"p{n}@x.example") for n in range(7)]
    fields = {"LastName": Transform(kind="keep"), "Birthdate": Transform(kind="year"), "Email": Transform(kind="keep")}
    with sandbox.store_conn() as conn:
        conn.execute("CREATE TEMP TABLE staged (sfid varchar(18), accountid varchar(18), lastname text, "
                     "birthdate date, email text)")
        with conn.cursor().copy("COPY pg_temp.staged FROM STDIN") as copy:
            for row in people:
                copy.write_row(row)
        with conn.transaction():
            rows = load.subset_table(conn, fields, staging, subset, None, parent_column="AccountId",
                                     encrypt=["LastName", "Birthdate"], cache_table="account_contact", keyring=ring)
        assert rows == 7
        stored = {r[0]: r[1:] for r in conn.execute(
            "SELECT sfid, _parent_sfid, lastname, birthdate, email FROM pg_temp.subset").fetchall()}
    assert set(stored) == {p[0] for p in people}
    for sfid, parent, name, born, email in people:
        got_parent, sealed_name, sealed_year, got_email = stored[sfid]
        assert (got_parent, got_email) == (parent, email)
        assert sealed_name.startswith(PREFIX) and name not in sealed_name
        assert ring.decrypt(sealed_name, context("account_contact", "LastName", sfid)) == name
        if born is None:
            assert sealed_year is None
        else:
            assert ring.decrypt(sealed_year, context("account_contact", "Birthdate", sfid)) == str(born.year)
        with pytest.raises(EncryptionError):  # bound to the child's table, not the parent's
            ring.decrypt(sealed_name, context("account", "LastName", sfid))


# ------------------------------------------------------------------------------------------- a real run

LOGICAL_DATE = dt.datetime.now(dt.UTC).replace(hour=3, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
NAMES = ["Encrypted contacts Zoë Łukasz", "Encrypted contacts O'Brien", "Encrypted contacts Plain"]


@pytest.fixture(scope="module")
def contacts(sandbox, airflow_db):
    """Three contacts only this module's policy selects, last modified 40 days before the run (its cutoff is 30)."""
    from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

    with policy_world(sandbox):
        sf = SalesforceHook(salesforce_conn_id="salesforce_default").get_conn()
        ids = [sf.Contact.create({"LastName": name, "Email": f"person{n}@encrypted.example"})["id"]
               for n, name in enumerate(NAMES)]
        with sandbox.org_conn() as conn:
            conn.execute("UPDATE org.contact SET lastmodifieddate = %s, systemmodstamp = now() WHERE id = ANY(%s)",
                         (LOGICAL_DATE - dt.timedelta(days=40), ids))
        yield sandbox, ids


def run_policy(*, dry_run: bool = False):
    from tests.dags.encryption_dags import retention__encrypted_contacts as dag

    run = dag.test(logical_date=LOGICAL_DATE, run_conf={"dry_run": dry_run, "cutoff": None})
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def live(sandbox, ids) -> list[dict]:
    return org_rows(sandbox, "SELECT id, lastname, email FROM org.contact WHERE id = ANY(%s) AND NOT isdeleted "
                             "ORDER BY id", (ids,))


def test_a_run_without_the_key_connection_stops_before_reading_the_org(contacts, monkeypatch, capfd):
    sandbox, ids = contacts
    monkeypatch.delenv("AIRFLOW_CONN_RETENTION_ENCRYPTION_KEY", raising=False)
    before = live(sandbox, ids)
    run, states = run_policy()
    assert run.state == "failed" and states["extract"] == "failed", states
    assert {s for t, s in states.items() if t not in ("extract", "wait_for_connect_sync")} == {"upstream_failed"}
    assert ("policy encrypted_contacts encrypts retained fields (retain.encrypt) but the Airflow connection "
            "'retention_encryption_key' cannot be read") in capfd.readouterr().out
    assert live(sandbox, ids) == before and len(before) == 3
    with sandbox.store_conn() as conn:  # not even the cache table was made, nor a ledger row written
        assert conn.execute("SELECT to_regclass('cache.encrypted_contacts')").fetchone()[0] is None
        if conn.execute("SELECT to_regclass('retention.runs')").fetchone()[0] is not None:
            assert conn.execute("SELECT count(*) FROM retention.runs WHERE policy_id = 'encrypted_contacts'"
                                ).fetchone()[0] == 0
    # A dry run needs no key, and its preview (task log and XCom) shows no encrypted field.
    run, states = run_policy(dry_run=True)
    assert run.state == "success" and states["extract"] == "success", states
    out = capfd.readouterr().out
    assert "DRY RUN preview" in out and "'lastname': '(encrypted)'" in out and "'email': '(encrypted)'" in out
    assert not any(r["lastname"] in out or r["email"] in out for r in before)


def printed(out: str) -> list[dict]:
    """decrypt's JSON lines (this process's stdout also carries Airflow's log lines)."""
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"table"')]


def test_the_cache_holds_no_plaintext_and_decrypt_gives_back_the_orgs_values(contacts, tmp_path, capsys):
    from retention.__main__ import main
    from retention.cache import ENCRYPTED_COMMENT
    from tests.dags.encryption_dags import TEXT

    sandbox, ids = contacts
    org = {r["id"]: r for r in live(sandbox, ids)}
    assert len(org) == 3
    run, states = run_policy()
    assert run.state == "success", states
    assert live(sandbox, ids) == []  # deleted, after the copy was validated

    cache = {r["sfid"]: r for r in store_rows(sandbox, "SELECT * FROM cache.encrypted_contacts")}
    assert set(cache) == set(ids)
    for sfid, row in cache.items():
        assert row["lastname"].startswith(PREFIX) and row["email"].startswith(PREFIX)
        stored = json.dumps(row, default=str)
        assert org[sfid]["lastname"] not in stored and org[sfid]["email"] not in stored
        assert "encrypted.example" not in stored and "Encrypted contacts" not in stored
    comments = {r["attname"]: r["c"] for r in store_rows(
        sandbox, "SELECT attname, col_description(attrelid, attnum) AS c FROM pg_attribute "
                 "WHERE attrelid = 'cache.encrypted_contacts'::regclass AND attnum > 0")}
    assert comments["lastname"] == comments["email"] == ENCRYPTED_COMMENT and comments["mailingcountry"] is None
    # The policy's External Object view leaves the encrypted fields out: Salesforce could only show their ciphertext.
    with psycopg.connect(sandbox.env["RETENTION_EXTERNAL_URL"], autocommit=True) as conn:
        shown = conn.execute("SELECT * FROM retention_external.encrypted_contacts")
        assert [c.name for c in shown.description] == ["sfid", "birthdate", "mailingcountry"]
        assert {r[0] for r in shown.fetchall()} == set(ids)
    # Staging (where the run held the org's values in plain text) is gone with the run.
    assert store_rows(sandbox, "SELECT tablename FROM pg_tables WHERE schemaname = 'retention_staging' AND "
                               "tablename LIKE %s", ("encrypted_contacts%",)) == []

    (tmp_path / "encrypted_contacts.yaml").write_text(TEXT)
    store = sandbox.env["RETENTION_STORE_URL"]
    base = ["--store-url", store, "decrypt", "--policy", "encrypted_contacts", "--policies", str(tmp_path)]
    capsys.readouterr()  # the DAG run's log
    assert main(base) == 0
    rows = printed(capsys.readouterr().out)
    assert {r["sfid"]: (r["LastName"], r["Email"]) for r in rows} == {
        i: (o["lastname"], o["email"]) for i, o in org.items()}
    assert {r["table"] for r in rows} == {"cache.encrypted_contacts"}
    assert main([*base, "--sfid", ids[0]]) == 0
    assert [r["LastName"] for r in printed(capsys.readouterr().out)] == [org[ids[0]]["lastname"]]

    # A ciphertext moved onto another record (someone with write access to the store) is refused, by name.
    with sandbox.store_conn() as conn:
        conn.execute("UPDATE cache.encrypted_contacts SET lastname = (SELECT lastname FROM cache.encrypted_contacts "
                     "WHERE sfid = %s) WHERE sfid = %s", (ids[0], ids[1]))
    assert main(base) == 1
    assert f"encrypted_contacts.lastname:{ids[1]}: the value does not authenticate" in capsys.readouterr().err
    # Without the key connection, nothing is printed.
    os.environ.pop("AIRFLOW_CONN_RETENTION_ENCRYPTION_KEY", None)
    try:
        assert main(base) == 2
        out = capsys.readouterr()
        assert "cannot read the key connection 'retention_encryption_key'" in out.err and printed(out.out) == []
    finally:
        os.environ["AIRFLOW_CONN_RETENTION_ENCRYPTION_KEY"] = sandbox.env["AIRFLOW_CONN_RETENTION_ENCRYPTION_KEY"]


def test_preflight_checks_the_key_connection(contacts, tmp_path, capsys, monkeypatch):
    from retention.__main__ import main
    from tests.dags.encryption_dags import TEXT

    sandbox, _ = contacts
    (tmp_path / "encrypted_contacts.yaml").write_text(TEXT)
    key = base64.b64decode(json.loads(sandbox.env["AIRFLOW_CONN_RETENTION_ENCRYPTION_KEY"])["password"])
    capsys.readouterr()
    main(["preflight", "--policies", str(tmp_path), "--no-pool"])
    [line] = [x for x in capsys.readouterr().out.splitlines() if "connection retention_encryption_key" in x]
    assert " ok " in line and f"AES-256 key {key_id(key)} (+0 previous) for encrypted_contacts" in line
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_ENCRYPTION_KEY",
                       json.dumps({"conn_type": "generic", "password": base64.b64encode(b"too short").decode()}))
    assert main(["preflight", "--policies", str(tmp_path), "--no-pool"]) == 1
    [line] = [x for x in capsys.readouterr().out.splitlines() if "connection retention_encryption_key" in x]
    assert " FAIL " in line and "password is 9 bytes; AES-256 needs 32" in line
