"""The act's own work per record of a mask: ``act.masked_line`` (the policy's strategies, the JSON kept as sent, the
Bulk CSV line) over staged rows of the shipped ``stale_leads_mask`` policy, in one process, no org and no store.
It tells the product's share of a mask's act apart from the waits on the org and the store that the scale
benchmark's act times include.

    PYTHONPATH=$PWD/plugins:$PWD .venv/bin/python -m pytest bench/test_bench_masking.py --benchmark-only -s
"""

from __future__ import annotations

import csv
import io
import json

from retention.policy import load_policy
from retention.steps.act import masked_line
from tests.conftest import REPO

ROWS = 50_000
CHUNK = 250_000  # the product's default chunk: what one act task masks
# Lead's fields as Salesforce's describe gives them (type, length): what the act reads from extract's describe.
TYPES = {"FirstName": "string", "LastName": "string", "Email": "email", "Phone": "phone"}
LENGTHS = {"FirstName": 40, "LastName": 80, "Email": 80, "Phone": 40}


def test_masking_a_chunk_of_leads(benchmark):
    from retention.masking import Masker

    policy = load_policy(REPO / "include" / "policies" / "stale_leads_mask.yaml")
    fields = list(policy.mask)
    masker = Masker({f: (s.strategy, s.options) for f, s in policy.mask.items()}, {f: TYPES[f] for f in fields},
                    b"bench masking key", field_lengths={f: LENGTHS[f] for f in fields})
    originals = {"FirstName": "Ada{}", "LastName": "Lovelace{}", "Email": "ada{}@example.com",
                 "Phone": "+44 20 7946 {}"}
    rows = [(f"00Q{n:015d}", *(originals[f].format(n % 9973) for f in fields)) for n in range(ROWS)]

    out = benchmark.pedantic(lambda: [masked_line(masker, fields, row) for row in rows], rounds=3, iterations=1)

    assert len(out) == ROWS
    for row, (kept, line) in zip(rows[:1000], out[:1000], strict=True):
        sent = json.loads(kept)
        (cells,) = csv.reader(io.StringIO(line.decode()))
        assert cells[0] == row[0] and set(sent) == set(fields)
        # Every value the policy masks differs from the original (Phone is nullified: #N/A in the upload).
        assert all(sent[f] != original for f, original in zip(fields, row[1:], strict=True))
        assert cells[fields.index("Phone") + 1] == "#N/A"
    per_record = benchmark.stats.stats.min / ROWS
    print(f"\nmasking {ROWS:,} leads ({', '.join(f'{f}: {s.strategy}' for f, s in policy.mask.items())}): "
          f"best {benchmark.stats.stats.min:.2f} s, {per_record * 1e6:.1f} us a record, "
          f"{per_record * CHUNK:.1f} s of one process's time for a chunk of {CHUNK:,}")
