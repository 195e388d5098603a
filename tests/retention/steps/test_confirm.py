"""confirm's look at Heroku Connect's mirror (retention.steps.confirm), on the sandbox's real store: a mask of a
field the Connect mapping does not mirror (Contact's Phone, here) is checked in the org only, and the mirror check
compares the fields it has instead of failing on a column that is not there."""

from __future__ import annotations

import time

from retention.hooks.store import RetentionStoreHook
from retention.policy import parse_policy
from retention.steps.confirm import mirror_reflects

POLICY = b"""id: phone_mask
description: masks a field Connect does not mirror
owner: tests
object: Contact
schedule: null
start_date: 2025-01-01
select:
  date_field: CreatedDate
  older_than_days: 30
retain:
  table: phone_mask
  fields:
    Email: keep
action: mask
mask:
  FirstName: anonymize
  Phone: nullify
"""


def test_the_mirror_check_compares_only_the_fields_connect_mirrors(sandbox, sf):
    first = "Unmirrored"
    sfid = sf.Contact.create({"FirstName": first, "LastName": "Phone mask", "Phone": "+1 555 0100"})["id"]
    deadline = time.monotonic() + 60
    with sandbox.store_conn() as conn:
        mirrored = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'salesforce' AND "
            "table_name = 'contact'").fetchall()}
        while not conn.execute("SELECT 1 FROM salesforce.contact WHERE sfid = %s", (sfid,)).fetchone():
            assert time.monotonic() < deadline, "Heroku Connect did not sync the contact"
            time.sleep(0.5)
    assert "phone" not in mirrored and "firstname" in mirrored  # the mapping this test relies on
    policy, store = parse_policy(POLICY, "phone_mask.yaml"), RetentionStoreHook()
    assert mirror_reflects(store, policy, [sfid], {sfid: {"FirstName": first, "Phone": None}})
    assert not mirror_reflects(store, policy, [sfid], {sfid: {"FirstName": first + "x", "Phone": None}})
    assert mirror_reflects(store, policy, [sfid], {sfid: {"Phone": None}})  # none mirrored: the row suffices
    assert not mirror_reflects(store, policy, [sfid, "003000000000000AAA"], {sfid: {"Phone": None}})
