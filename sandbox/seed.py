"""Deterministic synthetic data for the sandbox org, written straight into the org tables with COPY.

Retention jobs need a realistic org to run against: millions of rows, unicode, nulls, multi-line text,
references between objects and a handful of privacy holds. Calling Faker per row is far too slow for
a million contacts, so Faker fills small per-locale pools once and a seeded ``random.Random`` combines
them per row. The same seed, counts and ``now`` on a freshly cleared org give identical rows, IDs
included, so a failing retention run can be reproduced exactly.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import unicodedata
from array import array
from dataclasses import dataclass
from decimal import Decimal

from psycopg import sql

from sandbox import ids, org
from sandbox.objects import (
    ACCOUNT,
    CASE,
    CONTACT,
    INDUSTRIES,
    LEAD,
    LEAD_SOURCES,
    OBJECTS,
    OPPORTUNITY,
    PRIVACY_HOLD,
    PRIVACY_HOLD_REASON,
    SObject,
)

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MS = dt.timedelta(milliseconds=1)
_HISTORY_MS = int(6 * 365.25 * 86400 * 1000)  # CreatedDate spread: about six years before ``now``

# Locale -> (weight in %, country as stored, free-mail domains). Non-ASCII locales on purpose.
LOCALES = {
    "en_US": (40, "United States", ("gmail.com", "yahoo.com", "outlook.com")),
    "en_GB": (10, "United Kingdom", ("gmail.com", "btinternet.com", "hotmail.co.uk")),
    "de_DE": (15, "Deutschland", ("web.de", "gmx.de", "t-online.de")),
    "fr_FR": (15, "France", ("orange.fr", "free.fr", "laposte.net")),
    "pl_PL": (10, "Polska", ("wp.pl", "onet.pl", "o2.pl")),
    "ja_JP": (10, "日本", ("yahoo.co.jp", "docomo.ne.jp", "gmail.com")),
}
_POOL = 800  # Faker calls per locale and kind: enough variety, about a second to build.

HOLD_REASONS = (
    ("Litigation", "Records under legal hold for pending or anticipated litigation."),
    ("Regulatory inquiry", "A regulator requested the records be preserved."),
    ("Customer request", "The data subject asked that processing be restricted (GDPR Art. 18)."),
    ("Internal investigation", "Preserved for an internal audit or investigation."),
)

_CASE_SUBJECTS = (
    "Cannot log in", "Invoice question", "Refund request", "Delivery delayed", "Wrong item received",
    "Password reset", "Data export request", "Delete my data", "Billing address change", "Upgrade plan",
    "Rechnung fehlerhaft", "Problème de connexion", "Zwrot towaru", "配送の遅延について",
    'Feature request: "dark mode"',
)
_UNICODE_EXTRAS = ("Grüße aus Zürich", "naïve café, s'il vous plaît", "Łódź – Kraków", "東京都渋谷区", "✓ done 🙂",
                   "Ærøskøbing", "señor Muñoz", "Ελληνικά")


def _weighted(weights: dict) -> tuple:
    """A 100-slot table so a weighted pick is one ``random()`` and an index."""
    out = []
    for value, w in weights.items():
        out += [value] * w
    assert len(out) == 100, weights
    return tuple(out)


_LEAD_SOURCE = _weighted(dict(zip(LEAD_SOURCES, (35, 15, 20, 15, 15), strict=True)))
_SALUTATION = _weighted({None: 20, "Mr.": 35, "Ms.": 30, "Mrs.": 7, "Dr.": 6, "Prof.": 2})
_ACCOUNT_TYPE = _weighted({"Prospect": 25, "Customer - Direct": 40, "Customer - Channel": 15, "Partner": 12,
                           "Other": 3, None: 5})
_LEAD_STATUS = _weighted({"Open - Not Contacted": 30, "Working - Contacted": 30, "Closed - Converted": 20,
                          "Closed - Not Converted": 20})
_CASE_STATUS = _weighted({"New": 15, "Working": 20, "Escalated": 5, "Closed": 60})
_PRIORITY = _weighted({"High": 20, "Medium": 50, "Low": 30})
_ORIGIN = _weighted({"Phone": 30, "Email": 40, "Web": 30})
_TLDS = (".com", ".com", ".net", ".io", ".de", ".fr", ".pl", ".co.uk", ".jp")


# ---------------------------------------------------------------------------------------------
# Pools


def _ascii(text: str) -> str:
    """Lower-case ASCII letters and digits only, for e-mail local parts and domains."""
    text = text.replace("ł", "l").replace("Ł", "L").replace("ß", "ss").replace("æ", "ae").replace("ø", "o")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in text.lower() if ch.isalnum())


@dataclass(frozen=True)
class _Locale:
    country: str
    free_domains: tuple[str, ...]
    first: tuple[tuple[str, str], ...]  # (name, ascii form for e-mail)
    last: tuple[tuple[str, str], ...]
    companies: tuple[tuple[str, str], ...]  # (name, domain)
    cities: tuple[str, ...]
    streets: tuple[str, ...]
    postcodes: tuple[str, ...]
    titles: tuple[str, ...]
    phones: tuple[str, ...]  # ending in 3 digits, which are randomised per row
    sentences: tuple[str, ...]


def _unique(values) -> tuple:
    return tuple(dict.fromkeys(values))


@functools.lru_cache(maxsize=4)
def _pools(seed: int) -> tuple[_Locale, ...]:
    """Faker values per locale, in a fixed order so a seed always yields the same pools."""
    from faker import Faker

    out = []
    for n, (code, (_, country, free)) in enumerate(LOCALES.items()):
        fake = Faker(code)
        fake.seed_instance(seed * 1000 + n)  # instance-level Faker.seed: leaves the shared generator alone
        if code == "ja_JP":
            first = [fake.first_name_pair() for _ in range(_POOL)]
            last = [fake.last_name_pair() for _ in range(_POOL)]
            first = [(p[0], p[2].lower()) for p in first]
            last = [(p[0], p[2].lower()) for p in last]
            streets = [f"{fake.town()}{fake.chome()}{fake.ban()}" for _ in range(_POOL)]
        else:
            first = [(v, _ascii(v)) for v in (fake.first_name() for _ in range(_POOL))]
            last = [(v, _ascii(v)) for v in (fake.last_name() for _ in range(_POOL))]
            streets = [fake.street_address() for _ in range(_POOL)]
        companies = []
        for i, name in enumerate(_unique(fake.company() for _ in range(_POOL // 2))):
            slug = _ascii(name)[:30] if code != "ja_JP" else f"{fake.last_romanized_name().lower()}-{i}"
            companies.append((name, slug + _TLDS[i % len(_TLDS)]))
        phones = [p for p in (fake.phone_number() for _ in range(_POOL // 2)) if p[-3:].isdigit()]
        out.append(_Locale(
            country=country,
            free_domains=free,
            first=_unique((a, b or "user") for a, b in first if a),
            last=_unique((a, b or "kunde") for a, b in last if a),
            companies=tuple(companies),
            cities=_unique(fake.city() for _ in range(_POOL // 2)),
            streets=_unique(streets),
            postcodes=_unique(fake.postcode() for _ in range(_POOL // 2)),
            titles=_unique(fake.job()[:128] for _ in range(_POOL // 2)),
            phones=_unique(phones),
            sentences=_unique(fake.sentence(nb_words=12) for _ in range(_POOL)),
        ))
    return tuple(out)


def _locale_table(pools: tuple[_Locale, ...]) -> tuple[_Locale, ...]:
    return _weighted({p: w for p, (w, _, _) in zip(pools, LOCALES.values(), strict=True)})


# ---------------------------------------------------------------------------------------------
# IDs: the same values as ``ids.make_id``, computed fast enough for millions of rows.

_UPPER = [1 if "A" <= ch <= "Z" else 0 for ch in ids.BASE62]
_PAIRS = [a + b for a in ids.BASE62 for b in ids.BASE62]
_PAIR_UPPER = [_UPPER[i // 62] | _UPPER[i % 62] << 1 for i in range(62 * 62)]
_SUFFIX = ids._SUFFIX_CHARS


def _id_maker(key_prefix: str):
    """``serial -> 18-character ID``; equal to ``ids.make_id`` but about ten times faster."""
    head = key_prefix + ids.INSTANCE
    head_suffix = ids.checksum(head + "0" * 10)[0]
    cache: dict[int, tuple[str, str]] = {}
    b62 = ids.BASE62
    low_mod = 62**5

    def make(serial: int) -> str:
        hi, lo = divmod(serial, low_mod)
        middle = cache.get(hi)
        if middle is None:
            if hi >= 62**4:
                raise ValueError("serial out of range")
            digits, h = "", hi
            for _ in range(4):
                h, rem = divmod(h, 62)
                digits = b62[rem] + digits
            chunk = "0" + digits
            middle = cache[hi] = (chunk, _SUFFIX[sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")])
        rest, p2 = divmod(lo, 3844)
        d4, p1 = divmod(rest, 3844)
        bits = _UPPER[d4] | _PAIR_UPPER[p1] << 1 | _PAIR_UPPER[p2] << 3
        return head + middle[0] + b62[d4] + _PAIRS[p1] + _PAIRS[p2] + head_suffix + middle[1] + _SUFFIX[bits]

    return make


def _reserve(conn, obj: SObject, count: int) -> int:
    """Reserve ``count`` serials in one round trip (as ``org.reserve_ids``) and return the first."""
    if count <= 0:
        return 1
    seq = f"{org.SCHEMA}.{obj.table}_serial"
    last = conn.execute("SELECT setval(%s, nextval(%s) + %s - 1)", (seq, seq, count)).fetchone()[0]
    return last - count + 1


# ---------------------------------------------------------------------------------------------
# Row generators. Each yields tuples in the order of ``_COLUMNS[obj]``.

_SYSTEM = ("id", "isdeleted", "createddate", "lastmodifieddate", "systemmodstamp", "ownerid")
_COLUMNS = {
    ACCOUNT: _SYSTEM + ("name", "type", "industry", "phone", "website", "billingstreet", "billingcity",
                        "billingpostalcode", "billingcountry", "annualrevenue", "numberofemployees", "description"),
    CONTACT: _SYSTEM + ("accountid", "salutation", "firstname", "lastname", "title", "email", "phone", "mobilephone",
                        "birthdate", "mailingstreet", "mailingcity", "mailingpostalcode", "mailingcountry",
                        "leadsource", "hasoptedoutofemail", "lastactivitydate", "description"),
    LEAD: _SYSTEM + ("firstname", "lastname", "company", "title", "email", "phone", "status", "leadsource",
                     "industry", "city", "country", "annualrevenue", "isconverted", "convertedaccountid",
                     "convertedcontactid", "converteddate", "description"),
    OPPORTUNITY: _SYSTEM + ("accountid", "name", "stagename", "closedate", "amount", "probability", "type",
                            "leadsource", "description"),
    CASE: _SYSTEM + ("casenumber", "accountid", "contactid", "subject", "description", "status", "priority",
                     "origin", "suppliedname", "suppliedemail", "suppliedphone", "isclosed", "closeddate"),
    PRIVACY_HOLD_REASON: _SYSTEM + ("name", "detail"),
    PRIVACY_HOLD: _SYSTEM + ("name", "referencerecordid", "privacyholdreasonid", "isactive", "registereddate",
                             "enddate"),
}


class _Gen:
    """Shared per-run state and the small helpers every object's rows use."""

    def __init__(self, seed: int, now: dt.datetime):
        self.rng = random.Random(seed)
        self.rand = self.rng.random
        self.now = now
        self.now_ms = int((now - _EPOCH).total_seconds() * 1000)
        # SystemModstamp is the platform's own clock: even records loaded with back-dated audit fields
        # carry the time they were written, which is what Heroku Connect's polling relies on.
        self.loaded_at = dt.datetime.now(dt.UTC)
        self.locales = _locale_table(_pools(seed))

    def stamps(self, history_ms: int = _HISTORY_MS):
        """CreatedDate, LastModifiedDate: created within the history window, modified since, both before now."""
        rand = self.rand
        created = self.now_ms - 1000 - int(rand() ** 1.4 * history_ms)  # skewed towards recent years
        modified = created + int(rand() * rand() * (self.now_ms - created))
        return _EPOCH + dt.timedelta(milliseconds=created), _EPOCH + dt.timedelta(milliseconds=modified)

    def phone(self, loc: _Locale) -> str:
        p = loc.phones[int(self.rand() * len(loc.phones))]
        return f"{p[:-3]}{int(self.rand() * 1000):03d}"

    def pick(self, seq):
        return seq[int(self.rand() * len(seq))]

    def description(self, loc: _Locale) -> str | None:
        """Null for many rows, a sentence for most, long multi-line text (tabs, quotes, commas) for some."""
        rand = self.rand
        r = rand()
        if r < 0.35:
            return None
        if r < 0.85:
            return self.pick(loc.sentences)
        parts = []
        long = rand() < 0.05
        for _ in range(2 + int(rand() * (30 if long else 6))):
            s = rand()
            if s < 0.15:
                parts.append(f"\t- {self.pick(loc.sentences)}\n\t- {self.pick(loc.sentences)}")
            elif s < 0.25:
                parts.append(f'Customer wrote: "{self.pick(loc.sentences)}", then called again.')
            elif s < 0.3:
                parts.append(self.pick(_UNICODE_EXTRAS) + "\tref:\t" + str(int(rand() * 10**6)))
            else:
                parts.append(" ".join(self.pick(loc.sentences) for _ in range(1 + int(rand() * 5))))
        return "\n\n".join(parts) if rand() < 0.8 else "\r\n".join(parts)

    def email(self, first: str, last: str, domain: str) -> str:
        rand = self.rand
        r = rand()
        if r < 0.4:
            local = f"{first}.{last}"
        elif r < 0.6:
            local = f"{first[0]}{last}"
        elif r < 0.8:
            local = f"{first}_{last}{int(rand() * 100)}"
        else:
            local = f"{last}.{first}{int(rand() * 1000)}"
        return f"{local[:60]}@{domain}"


def _accounts(g: _Gen, first_serial: int, count: int, domains: list[str]):
    make, rand, pick = _id_maker(ACCOUNT.key_prefix), g.rand, g.pick
    locales, owner = g.locales, org.DEFAULT_OWNER
    for i in range(count):
        loc = pick(locales)
        name, domain = pick(loc.companies)
        if rand() < 0.5:  # branch offices: the company pool is small, and real orgs have such accounts too
            name = f"{name} {pick(loc.cities)}"
        domains.append(domain)
        created, modified = g.stamps()
        yield (
            make(first_serial + i), False, created, modified, g.loaded_at, owner,
            name,
            pick(_ACCOUNT_TYPE),
            pick(INDUSTRIES) if rand() < 0.9 else None,
            g.phone(loc) if rand() < 0.92 else None,
            f"https://www.{domain}" if rand() < 0.85 else None,
            pick(loc.streets) if rand() < 0.9 else None,
            pick(loc.cities) if rand() < 0.92 else None,
            pick(loc.postcodes) if rand() < 0.9 else None,
            loc.country if rand() < 0.95 else None,
            Decimal(int(rand() ** 3 * 5 * 10**10)).scaleb(-2) if rand() < 0.8 else None,
            int(rand() ** 3 * 50000) + 1 if rand() < 0.85 else None,
            g.description(loc),
        )


def _contacts(g: _Gen, first_serial: int, count: int, account_serial: int, domains: list[str], account_of: array):
    make, make_account = _id_maker(CONTACT.key_prefix), _id_maker(ACCOUNT.key_prefix)
    rand, pick, locales, owner = g.rand, g.pick, g.locales, org.DEFAULT_OWNER
    n_accounts = len(domains)
    today = g.now.date()
    birth_base, birth_span = dt.date(1940, 1, 1).toordinal(), (dt.date(2006, 12, 31) - dt.date(1940, 1, 1)).days
    for i in range(count):
        loc = pick(locales)
        first, first_a = pick(loc.first)
        last, last_a = pick(loc.last)
        a = int(rand() * n_accounts) if n_accounts and rand() < 0.97 else -1
        account_of.append(a)
        created, modified = g.stamps()
        r = rand()
        if r < 0.08:
            email = None
        elif r < 0.55 and a >= 0:
            email = g.email(first_a, last_a, domains[a])
        else:
            email = g.email(first_a, last_a, pick(loc.free_domains))
        activity = None
        if rand() < 0.6:
            start = created.date().toordinal()
            activity = dt.date.fromordinal(start + int(rand() * (today.toordinal() - start + 1)))
        yield (
            make(first_serial + i), False, created, modified, g.loaded_at, owner,
            make_account(account_serial + a) if a >= 0 else None,
            pick(_SALUTATION),
            first if rand() < 0.97 else None,
            last,
            pick(loc.titles) if rand() < 0.88 else None,
            email,
            g.phone(loc) if rand() < 0.85 else None,
            g.phone(loc) if rand() < 0.6 else None,
            dt.date.fromordinal(birth_base + int(rand() * birth_span)) if rand() < 0.7 else None,
            pick(loc.streets) if rand() < 0.9 else None,
            pick(loc.cities) if rand() < 0.9 else None,
            pick(loc.postcodes) if rand() < 0.9 else None,
            loc.country if rand() < 0.93 else None,
            pick(_LEAD_SOURCE) if rand() < 0.88 else None,
            rand() < 0.1,
            activity,
            g.description(loc),
        )


def _leads(g: _Gen, first_serial: int, count: int, account_serial: int, accounts: int, contact_serial: int,
           contacts: int):
    make, rand, pick, locales, owner = _id_maker(LEAD.key_prefix), g.rand, g.pick, g.locales, org.DEFAULT_OWNER
    make_account, make_contact = _id_maker(ACCOUNT.key_prefix), _id_maker(CONTACT.key_prefix)
    for i in range(count):
        loc = pick(locales)
        first, first_a = pick(loc.first)
        last, last_a = pick(loc.last)
        company, domain = pick(loc.companies)
        created, modified = g.stamps()
        status = pick(_LEAD_STATUS)
        # A converted lead points at the account and contact it became (and, read only, stays as it was).
        converted = status == "Closed - Converted" and accounts > 0 and contacts > 0
        yield (
            make(first_serial + i), False, created, modified, g.loaded_at, owner,
            first if rand() < 0.95 else None,
            last,
            company,
            pick(loc.titles) if rand() < 0.85 else None,
            g.email(first_a, last_a, domain if rand() < 0.6 else pick(loc.free_domains)) if rand() < 0.9 else None,
            g.phone(loc) if rand() < 0.85 else None,
            status,
            pick(_LEAD_SOURCE) if rand() < 0.9 else None,
            pick(INDUSTRIES) if rand() < 0.85 else None,
            pick(loc.cities) if rand() < 0.9 else None,
            loc.country if rand() < 0.92 else None,
            Decimal(int(rand() ** 3 * 10**10)).scaleb(-2) if rand() < 0.6 else None,
            converted,
            make_account(account_serial + int(rand() * accounts)) if converted else None,
            make_contact(contact_serial + int(rand() * contacts)) if converted else None,
            (created + (modified - created) * rand()).date() if converted else None,
            g.description(loc),
        )


_STAGE = _weighted({"Prospecting": 8, "Qualification": 8, "Needs Analysis": 6, "Value Proposition": 5,
                    "Id. Decision Makers": 4, "Perception Analysis": 3, "Proposal/Price Quote": 4,
                    "Negotiation/Review": 4, "Closed Won": 30, "Closed Lost": 28})
_PROBABILITY = {"Prospecting": 10, "Qualification": 10, "Needs Analysis": 20, "Value Proposition": 50,
                "Id. Decision Makers": 60, "Perception Analysis": 70, "Proposal/Price Quote": 75,
                "Negotiation/Review": 90, "Closed Won": 100, "Closed Lost": 0}
_OPPORTUNITY_TYPE = _weighted({"Existing Customer - Upgrade": 25, "Existing Customer - Replacement": 10,
                               "Existing Customer - Downgrade": 5, "New Customer": 50, None: 10})


def _opportunities(g: _Gen, first_serial: int, count: int, account_serial: int, accounts: int):
    make, make_account = _id_maker(OPPORTUNITY.key_prefix), _id_maker(ACCOUNT.key_prefix)
    rand, pick, owner = g.rand, g.pick, org.DEFAULT_OWNER
    for i in range(count):
        loc = pick(g.locales)
        created, modified = g.stamps()
        stage = pick(_STAGE)
        company, _ = pick(loc.companies)
        yield (
            make(first_serial + i), False, created, modified, g.loaded_at, owner,
            make_account(account_serial + int(rand() * accounts)) if accounts and rand() < 0.95 else None,
            f"{company} - {pick(('Renewal', 'Expansion', 'New Business', 'Pilot', 'Services'))}"[:120],
            stage,
            (created + (modified - created) * rand()).date() + dt.timedelta(days=int(rand() * 90)),
            Decimal(int(rand() ** 2 * 5 * 10**7)).scaleb(-2) if rand() < 0.9 else None,
            _PROBABILITY[stage],
            pick(_OPPORTUNITY_TYPE),
            pick(_LEAD_SOURCE) if rand() < 0.7 else None,
            g.description(loc),
        )


def _cases(g: _Gen, first_serial: int, count: int, contact_serial: int, account_serial: int, account_of: array,
           n_accounts: int):
    make, make_contact, make_account = (_id_maker(o.key_prefix) for o in (CASE, CONTACT, ACCOUNT))
    rand, pick, locales, owner = g.rand, g.pick, g.locales, org.DEFAULT_OWNER
    n_contacts = len(account_of)
    for i in range(count):
        loc = pick(locales)
        c = int(rand() * n_contacts) if n_contacts and rand() < 0.95 else -1
        a = account_of[c] if c >= 0 else (int(rand() * n_accounts) if n_accounts and rand() < 0.7 else -1)
        created, modified = g.stamps()
        status, origin = pick(_CASE_STATUS), pick(_ORIGIN)
        closed = status == "Closed"
        supplied = origin != "Phone" and rand() < 0.6
        first, first_a = pick(loc.first)
        last, last_a = pick(loc.last)
        serial = first_serial + i
        yield (
            make(serial), False, created, modified, g.loaded_at, owner,
            f"{serial:08d}",
            make_account(account_serial + a) if a >= 0 else None,
            make_contact(contact_serial + c) if c >= 0 else None,
            pick(_CASE_SUBJECTS) if rand() < 0.97 else None,
            g.description(loc),
            status,
            pick(_PRIORITY),
            origin,
            f"{first} {last}" if supplied else None,
            g.email(first_a, last_a, pick(loc.free_domains)) if supplied and rand() < 0.9 else None,
            g.phone(loc) if supplied and rand() < 0.5 else None,
            closed,
            created + dt.timedelta(milliseconds=int((modified - created) / _MS * rand())) if closed else None,
        )


def _reasons(g: _Gen, first_serial: int):
    make, owner = _id_maker(PRIVACY_HOLD_REASON.key_prefix), org.DEFAULT_OWNER
    for i, (name, text) in enumerate(HOLD_REASONS):
        created, modified = g.stamps()
        yield (make(first_serial + i), False, created, modified, g.loaded_at, owner, name, text)


# Hold states, cycled so even three holds mix active and inactive: (IsActive, EndDate kind).
_HOLD_STATES = (
    (True, None), (False, "past"), (True, "future"), (True, "past"), (True, None), (False, None), (True, "future"),
)


def _holds(g: _Gen, first_serial: int, count: int, reason_serial: int, targets: list[tuple[SObject, int, int]]):
    """``targets``: (object, first serial, count) of the records holds may point at."""
    make, rand, owner = _id_maker(PRIVACY_HOLD.key_prefix), g.rand, org.DEFAULT_OWNER
    make_reason = _id_maker(PRIVACY_HOLD_REASON.key_prefix)
    makers = {o: _id_maker(o.key_prefix) for o, _, _ in targets}
    targets = [t for t in targets if t[2] > 0]
    total = sum(n for _, _, n in targets)
    picks = g.rng.sample(range(total), min(count, total)) if total else []
    # Make sure every kind of target is held at least once when there are enough holds.
    offsets, start = [], 0
    for _, _, n in targets:
        offsets.append(start)
        start += n

    def kind(p):
        return max(k for k, off in enumerate(offsets) if p >= off)

    for k, (_, _, n) in enumerate(targets):
        if len(picks) >= len(targets) and not any(kind(p) == k for p in picks):
            counts = [sum(1 for p in picks if kind(p) == j) for j in range(len(targets))]
            victim = next(j for j, p in enumerate(picks) if counts[kind(p)] > 1)
            picks[victim] = offsets[k] + int(rand() * n)  # other picks are of other kinds: no duplicate
    today = g.now.date().toordinal()
    for i, p in enumerate(picks):
        k = kind(p)
        obj, serial0, _ = targets[k]
        active, end_kind = _HOLD_STATES[i % len(_HOLD_STATES)]
        created, modified = g.stamps(2 * 365 * 86400 * 1000)
        start_day = created.date().toordinal()
        if end_kind == "past":
            end = dt.date.fromordinal(start_day + int(rand() * (today - start_day)))
        elif end_kind == "future":
            end = dt.date.fromordinal(today + 1 + int(rand() * 730))
        else:
            end = None
        yield (
            make(first_serial + i), False, created, modified, g.loaded_at, owner,
            f"PH-{i + 1:06d}",
            makers[obj](serial0 + p - offsets[k]),
            make_reason(reason_serial + int(rand() * len(HOLD_REASONS))),
            active,
            dt.date.fromordinal(start_day),
            end,
        )


# ---------------------------------------------------------------------------------------------
# Public API


def _copy(conn, obj: SObject, rows) -> int:
    """Stream rows into the object's table; psycopg flushes its buffer as it goes, so memory stays flat."""
    cols = sql.SQL(", ").join(map(sql.Identifier, _COLUMNS[obj]))
    n = 0
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(org.table(obj), cols)) as copy:
        write = copy.write_row
        for row in rows:
            write(row)
            n += 1
    return n


def default_counts(contacts: int) -> dict[str, int]:
    """Counts derived from the number of contacts, in proportions typical of a B2B org."""
    leads = contacts // 2
    return {
        "accounts": max(1, contacts // 10),
        "leads": leads,
        "cases": contacts // 4,
        "opportunities": contacts // 5,
        "holds": max(3, round(0.005 * (contacts + leads))) if contacts > 0 else 0,
    }


def seed(conn, *, contacts: int, seed: int = 42, now: dt.datetime | None = None, accounts: int | None = None,
         leads: int | None = None, cases: int | None = None, holds: int | None = None,
         opportunities: int | None = None) -> dict[str, int]:
    """Fill the org with generated records in one transaction; returns rows written per sObject name.

    Deterministic for a given seed, counts and ``now`` on an empty (``clear``-ed) org. ``now`` defaults
    to today at midnight UTC so that runs on the same day agree.
    """
    if now is None:
        now = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    else:
        now = now.astimezone(UTC)
    defaults = default_counts(contacts)
    accounts = defaults["accounts"] if accounts is None else accounts
    leads = defaults["leads"] if leads is None else leads
    cases = defaults["cases"] if cases is None else cases
    holds = defaults["holds"] if holds is None else holds
    opportunities = defaults["opportunities"] if opportunities is None else opportunities

    g = _Gen(seed, now)
    out: dict[str, int] = {}
    with conn.transaction():
        s_acc = _reserve(conn, ACCOUNT, accounts)
        s_con = _reserve(conn, CONTACT, contacts)
        s_lead = _reserve(conn, LEAD, leads)
        s_case = _reserve(conn, CASE, cases)
        s_opp = _reserve(conn, OPPORTUNITY, opportunities)
        s_reason = _reserve(conn, PRIVACY_HOLD_REASON, len(HOLD_REASONS))
        domains: list[str] = []
        account_of = array("i")  # contact index -> account index (-1: none), for cases' AccountId
        out[ACCOUNT.name] = _copy(conn, ACCOUNT, _accounts(g, s_acc, accounts, domains))
        out[CONTACT.name] = _copy(conn, CONTACT, _contacts(g, s_con, contacts, s_acc, domains, account_of))
        out[LEAD.name] = _copy(conn, LEAD, _leads(g, s_lead, leads, s_acc, accounts, s_con, contacts))
        out[OPPORTUNITY.name] = _copy(conn, OPPORTUNITY, _opportunities(g, s_opp, opportunities, s_acc, accounts))
        out[CASE.name] = _copy(conn, CASE, _cases(g, s_case, cases, s_con, s_acc, account_of, accounts))
        out[PRIVACY_HOLD_REASON.name] = _copy(conn, PRIVACY_HOLD_REASON, _reasons(g, s_reason))
        # PrivacyHold.ReferenceRecordId refers to Accounts, Contacts, Individuals, Leads and Users (not Cases).
        targets = [(CONTACT, s_con, contacts), (LEAD, s_lead, leads), (ACCOUNT, s_acc, accounts)]
        n_holds = min(holds, contacts + leads + accounts)
        s_hold = _reserve(conn, PRIVACY_HOLD, n_holds)
        out[PRIVACY_HOLD.name] = _copy(conn, PRIVACY_HOLD, _holds(g, s_hold, n_holds, s_reason, targets))
    return out


def clear(conn) -> None:
    """Empty every org table and the deletions log, and restart ID serials so a re-seed repeats its IDs."""
    tables = [org.table(o) for o in OBJECTS.values()] + [sql.Identifier(org.SCHEMA, "deletions")]
    with conn.transaction():
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join(tables)))
        for o in OBJECTS.values():
            conn.execute(sql.SQL("ALTER SEQUENCE {} RESTART").format(sql.Identifier(org.SCHEMA, o.table + "_serial")))


__all__ = ["HOLD_REASONS", "LOCALES", "clear", "default_counts", "seed"]
