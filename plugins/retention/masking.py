"""Masking strategies: the values written over a record's fields in Salesforce when a policy masks.

Each strategy turns one original value into a replacement that stays valid for the Salesforce field
(an email stays an address, a date stays ``YYYY-MM-DD``, numbers stay numbers, lengths fit), because
the Bulk API 2.0 update rejects the whole row otherwise and the record would keep its personal data.
Pure Python and per value: the ``delete_or_mask`` task streams records through a :class:`Masker`.

Which strategies are random and which are reproducible is part of the contract:

- ``anonymize`` is random on every call, as Privacy Center's is ("Blake" -> "Xyz42").
- ``pseudonymize`` and ``hash`` depend only on (key, value): the same person gets the same pseudonym in
  every record, and ``hash`` equals the ``hash`` retain transform of the same text, so a masked org
  value still joins to the store.
- ``random_date``, ``random_number`` and ``format_preserving`` are seeded by (key, record id, field), so
  a retried task writes exactly what the first attempt wrote.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import math
import re
import secrets
import string
from collections.abc import Mapping
from hashlib import sha256
from typing import Any

from retention.transforms import hmac_hex, pg_text

STRATEGIES = (
    "anonymize", "pseudonymize", "hash", "nullify", "static", "random_date", "random_number", "format_preserving",
)
LIBRARIES = ("first_name", "last_name", "full_name", "city", "company", "word")
# What Bulk API 2.0 reads as "set this field to null"; an empty cell would leave the old value in place.
BULK_NULL = "#N/A"


def _words(text: str) -> tuple[str, ...]:
    sep = "|" if "|" in text else None
    return tuple(w.strip() for w in text.replace("\n", "" if sep else " ").split(sep) if w.strip())


# Word libraries for pseudonymize, in the spirit of Privacy Center's Salesforce-provided ones. Built in
# (drawn once from Faker's public-domain lists) so that a pseudonym never changes with a library upgrade.
FIRST_NAMES = _words("""
Aaron Adam Adrienne Albert Alejandro Alexander Alexis Alicia Alison Alvin Amber Andre Andrew Angelica Ann
Annette Antonio Ariel Ashley Autumn Barry Benjamin Bethany Beverly Billy Bobby Bradley Brandon Brenda Brett
Brianna Brittany Bruce Caitlin Calvin Candice Carlos Carol Carolyn Cassandra Catherine Chad Charlotte Chelsey
Chloe Christie Christine Claire Clayton Cody Colleen Connie Cory Craig Crystal Daisy Dalton Dana Danny Darlene
Darryl Dave Dean Deborah Dennis Desiree Devon Diane Dominic Donald Dorothy Duane Dylan Eddie Edward Elaine
Elizabeth Emma Erik Ernest Evan Felicia Francis Frank Frederick Gabriella Garrett Gene Gerald Glen Gloria Grace
Gregg Gwendolyn Hannah Hayden Hector Henry Holly Ian Isabella Jack Jaclyn Jade James Janet Jared Jason Jean
Jeff Jenna Jeremiah Jerome Jesse Jill Jimmy Joanna Jodi Joel Johnny Jonathon Jorge Joshua Juan Julia Justin
Kara Karina Karla Kathleen Katie Kaylee Kellie Kendra Kerri Kiara Kimberly Krista Kristie Kristine Krystal
Kylie Larry Latoya Laurie Lee Leroy Linda Lisa Loretta Louis Luis Lynn Madison Mallory Marc Marcus Mariah
Marilyn Marissa Martin Mason Maureen Maxwell Megan Melinda Melody Meredith Michaela Michelle Mike Misty Monica
Morgan Natasha Neil Nicolas Noah Olivia Paige Parker Patrick Paula Penny Philip Preston Rachel Randy Ray
Rebekah Renee Richard Ricky Robert Robin Roger Ronnie Roy Ruth Sally Sandra Sarah Sean Sergio Shannon Shaun
Sheena Shelia Sheri Sheryl Sonia Sophia Stacie Stefanie Steve Sue Suzanne Tabitha Tami Tanner Tasha Terrance
Terry Thomas Timothy Tom Toni Tracey Tracy Tricia Tyler Vanessa Vicki Victor Virginia Warren Wesley Willie
Yesenia Yvonne
""")

LAST_NAMES = _words("""
Abbott Adkins Ali Alvarez Andrews Arias Ashley Avery Baird Ballard Barker Barrera Bartlett Bauer Beard Beltran
Bennett Berg Best Blackburn Blanchard Bonilla Bowen Boyle Brady Bray Briggs Brown Bryant Bullock Burns Byrd
Caldwell Cameron Cantrell Carlson Carrillo Case Cervantes Chaney Chase Choi Cisneros Clayton Cochran Collier
Compton Contreras Cooley Cortez Craig Cross Cunningham Daniels Davidson Dawson Delacruz Diaz Dixon Donovan
Doyle Duffy Dunn Eaton Ellison Esparza Evans Farmer Ferrell Fischer Fletcher Flynn Foster Franco Frederick
Fritz Fuentes Gallegos Garcia Garrison Gentry Gilbert Gilmore Gomez Goodman Graham Green Griffin Guerra Haas
Hamilton Haney Hardin Harper Harrison Hatfield Haynes Henderson Henson Herring Hicks Hinton Hoffman Holland
Hood Horne Howard Hubbard Huff Humphrey Hurst Ingram Jacobson Jennings Johnson Joseph Kane Kelley Kent Kidd
Klein Knox Krueger Landry Larsen Leach Leonard Lewis Livingston Lopez Lozano Lutz Macdonald Maddox Mann
Marshall Massey Matthews Maynard Mccall Mcclain Mccoy Mcdowell Mcintosh Mckenzie Mclean Mcpherson Melendez
Mercado Meyers Miller Molina Montoya Moore Moreno Morrow Mosley Mullen Murray Neal Nguyen Nixon Norris Obrien
Odom Oneal Ortega Owen Padilla Parker Patel Paul Pena Peters Pham Pineda Ponce Potter Pratt Proctor Ramos
Rangel Reed Reilly Rice Richardson Riley Rivera Roberts Rocha Rojas Rosales Roth Rubio Russo Sampson Sanford
Saunders Schmidt Schultz Serrano Shannon Shelton Shields Simon Singleton Smith Solomon Spears Stanley Stephens
Stewart Strickland Sullivan Sweeney Taylor Thompson Townsend Tucker Valdez Vance Vaughan Velasquez Villanueva
Wade Waller Walters Ware Waters Weaver Weeks Werner White Wiley Williams Winters Wong Woodward Yates Zamora
""")

CITIES = _words("""
Amsterdam|Athens|Atlanta|Auckland|Austin|Baltimore|Bangalore|Bangkok|Barcelona|Basel|Belfast|Berlin|Bern|Bilbao|
Birmingham|Bologna|Bordeaux|Boston|Bratislava|Bremen|Brisbane|Bristol|Brno|Brussels|Bucharest|Budapest|
Buenos Aires|Calgary|Cambridge|Cape Town|Cardiff|Charlotte|Chicago|Cleveland|Cologne|Copenhagen|Cork|Dallas|
Denver|Detroit|Dortmund|Dresden|Dublin|Durban|Edinburgh|Eindhoven|Florence|Frankfurt|Geneva|Genoa|Ghent|Glasgow|
Gothenburg|Graz|Hamburg|Hanover|Helsinki|Hong Kong|Honolulu|Houston|Indianapolis|Istanbul|Jacksonville|
Kansas City|Krakow|Lausanne|Leeds|Leipzig|Lille|Lima|Linz|Lisbon|Liverpool|Ljubljana|London|Los Angeles|
Louisville|Lyon|Madrid|Malaga|Malmo|Manchester|Marseille|Melbourne|Memphis|Miami|Milan|Milwaukee|Minneapolis|
Montreal|Munich|Nantes|Naples|Nashville|New Orleans|New York|Nice|Nottingham|Nuremberg|Oakland|Omaha|Osaka|Oslo|
Ottawa|Oxford|Palermo|Paris|Perth|Philadelphia|Phoenix|Pittsburgh|Porto|Portland|Prague|Quebec City|Raleigh|
Reykjavik|Riga|Rome|Rotterdam|Sacramento|Salzburg|San Diego|San Francisco|San Jose|Santiago|Sao Paulo|Seattle|
Seoul|Seville|Singapore|Sofia|Stockholm|Stuttgart|Sydney|Tallinn|Tampa|Tokyo|Toronto|Toulouse|Turin|Utrecht|
Valencia|Vancouver|Venice|Vienna|Vilnius|Warsaw|Wellington|Winnipeg|Wroclaw|Zagreb|Zurich
""")

COMPANIES = _words("""
Gould-Foster|Jones PLC|Diaz Inc|Davis Group|Serrano Inc|Mccoy PLC|Ray Group|Cherry Inc|Duncan PLC|Davis-Joseph|
Waters-Owens|Ward-Wright|Hale and Sons|Andrews PLC|Golden-Blair|Lynch-Jones|Fisher-Hayden|Duran PLC|
Peterson-Bell|Riley-Bryant|Duffy Group|Kelly-Carr|Brown-Tate|Rodgers Group|Rangel-Crawford|Cole PLC|
Ware-Fuentes|Rosario-Hernandez|Hernandez Ltd|Smith PLC|Baker Inc|Barnes LLC|Lam-Deleon|Olson Group|Lee and Sons|
Martin-Peterson|Garcia PLC|Herrera LLC|Walters LLC|Castillo-Collins|Garcia LLC|Harris PLC|Thomas-Daniels|
Chang LLC|Odonnell-Kelly|Patel PLC|Fields-Austin|Shaffer Group|Lee-Jacobs|West-Giles|Friedman-Diaz|Garcia Group|
Morgan Group|Browning Ltd|Woods and Sons|Mccormick-Cook|Downs-Lee|Johnson and Sons|Mason-Gallagher|Green-Barnes|
Brown Ltd|Hurst-Bates|Franklin and Sons|Thomas PLC|Romero PLC|Wolf Inc|Nguyen-Mcpherson|Martinez-Ramos|
Lambert Group|Lewis LLC|Prince and Sons|Ponce and Sons|Bowen Inc|Spencer-Alexander|Cruz PLC|Bonilla Inc|
Nelson and Sons|Atkinson-Lowe|Sullivan-Herrera|Marsh and Sons|Woodard-Adams|Smith-Gamble|Mcintosh-Adams|
Williams Ltd|Hurley and Sons|Williams-Harris|Fuller-Schmidt|Roberts PLC|Johnson-Smith|Rodriguez-Fuentes|
Douglas-Gardner|Waller-Parker|Haas LLC|Collier Ltd|Hood Inc|Garrett LLC|Martin-Miller|Harrell-Lambert|
George-Schwartz|Stevens and Sons|Griffin-Baker|Kaufman-Payne|Johnson LLC|Kelly Inc|James-Wells|Ross Inc|
Johnson-Torres|Miller PLC|Sandoval Ltd|Mitchell PLC|Browning PLC|Chung-Bennett|Hansen-Burton|Salinas-Goodman|
Young-Avila|Singh Group|Bruce-Jones|Jones and Sons|King-Paul|Howell-Anderson|Brown-Adams|Holder PLC|Collins Inc|
Smith-Stevens|Rangel and Sons|Perkins and Sons|Jimenez Group|Maldonado-Sullivan|Smith-Christensen|Wilson-House|
Long PLC|Ward Group|Dickerson-Ramirez|Davenport LLC|Henson-Cain|Ball Inc|Washington-Barr|Scott-Rodgers|
Clark Group|Simmons-Kelley|Davis LLC|Gutierrez-Warren|Nelson-Goodwin|Ramirez-Ponce|Mcdaniel PLC|Cruz Ltd|
Reynolds-Collins|Martinez Group|Smith-Myers|Walker and Sons
""")

WORDS = _words("""
American Mrs about account activity admit again agent agreement allow already among animal anyone approach arm
article attack author away bag base because begin benefit beyond bit board both break build buy can card case
center certain chance check church claim close college common computer consider control couple create cup cut
day decide degree despite difference direction discuss door drive each eat education either employee enough
establish ever everything executive expert face family fear few fill financial fire fish focus for form free
full garden generation glass great grow guy happen head heart here himself hold hot how hundred identify
important increase industry interview issue job keep kitchen language later lay least less level likely little
look low maintain man many material mean meet mention might minute modern month mother movie myself natural
necessary new next nor nothing occur officer old onto option our own paper partner pattern per person pick plan
point politics position practice president price product project provide push quickly radio rather real reason
recognize reflect remain represent respond return rise role safe scene scientist seat see send serious seven
she shoulder similar sing site skill social somebody sometimes sort southern specific spring standard statement
step store strong stuff successful suggest surface take teach television term that themselves these think
though three thus tonight tough training treatment trouble turn understand use very vote wall water weight what
whether who why will wish woman worker write yeah you
""")


_TEXT_TYPES = frozenset({"string", "textarea", "encryptedstring", "combobox", "url"})
_INT_TYPES = frozenset({"int", "long"})
_NUMBER_TYPES = frozenset({"double", "currency", "percent"}) | _INT_TYPES
_ALL = frozenset(STRATEGIES)
# Which strategies can produce a value the field accepts. Ids and lookups are absent on purpose: Privacy
# Center only masks mutable fields, and rewriting an owner or a parent would move the record.
_ALLOWED: dict[str, frozenset[str]] = {
    **dict.fromkeys(_TEXT_TYPES, _ALL - {"random_date", "random_number"}),
    "email": frozenset({"anonymize", "pseudonymize", "hash", "nullify", "static", "format_preserving"}),
    "phone": frozenset({"anonymize", "hash", "nullify", "static", "format_preserving"}),
    "date": frozenset({"nullify", "static", "random_date"}),
    "datetime": frozenset({"nullify", "static", "random_date"}),
    **dict.fromkeys(_NUMBER_TYPES, frozenset({"nullify", "static", "random_number", "format_preserving"})),
    "picklist": frozenset({"nullify", "static"}),
    "multipicklist": frozenset({"nullify", "static"}),
    "time": frozenset({"nullify", "static"}),
    # A checkbox cannot be null in Salesforce.
    "boolean": frozenset({"static"}),
}
# Salesforce's own limits, used when neither describe nor the policy gives a length.
_DEFAULT_LENGTH = {"email": 80, "phone": 40}
_OPTIONS: dict[str, frozenset[str]] = {
    "anonymize": frozenset(),
    "pseudonymize": frozenset({"library"}),
    "hash": frozenset(),
    "nullify": frozenset(),
    "static": frozenset({"value"}),
    "random_date": frozenset({"start", "end"}),
    "random_number": frozenset({"min", "max", "decimals"}),
    "format_preserving": frozenset(),
}
_REQUIRED = {"static": ("value",), "random_date": ("start", "end"), "random_number": ("min", "max")}
# Close to what Salesforce's email validation accepts, restricted to ASCII so every masked address passes.
_EMAIL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")
_ALNUM = string.ascii_letters + string.digits
_LOWER_ALNUM = string.ascii_lowercase + string.digits


def is_valid_email(value: str) -> bool:
    """Whether Salesforce would accept ``value`` in an email field (ASCII subset of its rule)."""
    return isinstance(value, str) and len(value) <= 80 and bool(_EMAIL.match(value))


class _Seeded:
    """A reproducible stream of choices: HMAC-SHA256(key, label || counter) in counter mode.

    ``random.Random`` only promises a stable ``random()`` across Python versions, not ``choice`` or
    ``randrange``; this stream keeps a masked value identical after a Python upgrade.
    """

    def __init__(self, key: bytes, *parts: str) -> None:
        self._key = key
        self._label = "\x00".join(parts).encode("utf-8")
        self._counter = 0

    def _u64(self) -> int:
        block = hmac.new(self._key, self._label + self._counter.to_bytes(8, "big"), sha256).digest()
        self._counter += 1
        return int.from_bytes(block[:8], "big")

    def below(self, n: int) -> int:
        # Modulo bias is below n / 2**64: invisible for the ranges masking draws from.
        return self._u64() % n

    def fraction(self) -> float:
        return (self._u64() >> 11) / 2**53


class _Random:
    """The same interface from the OS's CSPRNG, for strategies that promise a different value each time."""

    @staticmethod
    def below(n: int) -> int:
        return secrets.randbelow(n)

    @staticmethod
    def fraction() -> float:
        return secrets.randbits(53) / 2**53


def _pick(rnd: _Seeded | _Random, alphabet: str | tuple[str, ...], n: int = 1) -> str:
    return "".join(alphabet[rnd.below(len(alphabet))] for _ in range(n))


# ---------------------------------------------------------------------------------------------- options


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)


def _to_date(value: Any) -> dt.date | dt.datetime:
    """A date option as YAML gives it (date, datetime) or as a string (ISO date or datetime)."""
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        text = value.strip()
        return dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(text)
    raise TypeError(f"expected a date, got {type(value).__name__}")


def validate_options(strategy: str, options: Mapping[str, Any] | None) -> list[str]:
    """Problems with a strategy and its options, as messages for the policy's import error; [] if fine."""
    if strategy not in STRATEGIES:
        return [f"unknown masking strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"]
    options = dict(options or {})
    problems = []
    allowed = _OPTIONS[strategy] | {"field_length"}
    for name in sorted(set(options) - allowed):
        problems.append(f"{strategy}: unknown option {name!r} (allowed: {', '.join(sorted(allowed))})")
    for name in _REQUIRED.get(strategy, ()):
        if name not in options:
            problems.append(f"{strategy}: option {name!r} is required")
    length = options.get("field_length")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        problems.append(f"{strategy}: field_length must be a positive integer, got {length!r}")
    if strategy == "pseudonymize" and options.get("library") not in (None, *LIBRARIES):
        problems.append(f"pseudonymize: library must be one of {', '.join(LIBRARIES)}, got {options['library']!r}")
    if strategy == "static" and "value" in options:
        value = options["value"]
        if value is not None and not isinstance(value, str | int | float | decimal.Decimal | dt.date | dt.time):
            problems.append(f"static: value must be a scalar, got {type(value).__name__}")
    if strategy == "random_date" and "start" in options and "end" in options:
        try:
            start, end = _to_date(options["start"]), _to_date(options["end"])
        except (TypeError, ValueError) as exc:
            problems.append(f"random_date: start and end must be ISO dates ({exc})")
        else:
            if _as_datetime(start, end=False) > _as_datetime(end, end=True):
                problems.append(f"random_date: start {start} is after end {end}")
    if strategy == "random_number" and "min" in options and "max" in options:
        low, high = options["min"], options["max"]
        if not (_is_number(low) and _is_number(high)):
            problems.append(f"random_number: min and max must be numbers, got {low!r} and {high!r}")
        elif low > high:
            problems.append(f"random_number: min {low} is greater than max {high}")
        decimals = options.get("decimals")
        if decimals is not None and (not isinstance(decimals, int) or isinstance(decimals, bool) or decimals < 0):
            problems.append(f"random_number: decimals must be a non-negative integer, got {decimals!r}")
    return problems


def validate_field_type(
    strategy: str, field_type: str, options: Mapping[str, Any] | None = None, *, field_length: int | None = None
) -> list[str]:
    """Problems with using ``strategy`` on a Salesforce field of ``field_type`` (from describe); [] if fine."""
    ftype = (field_type or "").lower()
    if ftype not in _ALLOWED:
        if ftype in ("id", "reference"):
            return [f"{strategy}: {ftype} fields are identifiers or owners and cannot be masked"]
        return [f"{strategy}: field type {field_type!r} cannot be masked"]
    if strategy not in _ALLOWED[ftype]:
        return [f"{strategy}: not valid for {ftype} fields (use one of {', '.join(sorted(_ALLOWED[ftype]))})"]
    options = options or {}
    if strategy == "static" and options.get("value") is not None:
        try:
            value = _coerce(options["value"], ftype)
        except (TypeError, ValueError) as exc:
            return [f"static: value {options['value']!r} is not valid for a {ftype} field ({exc})"]
        length = _max_length(ftype, options.get("field_length"), field_length)
        if isinstance(value, str) and length is not None and len(value) > length:
            return [f"static: value is longer than the field's {length} characters"]
    if strategy == "random_number" and ftype in _INT_TYPES and _is_number(options.get("min")):
        if _is_number(options.get("max")) and math.ceil(options["min"]) > math.floor(options["max"]):
            return [f"random_number: no integer between {options['min']} and {options['max']}"]
    return []


# ------------------------------------------------------------------------------------------- formatting


def _sf_datetime(value: dt.datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _plain_number(value: float | decimal.Decimal) -> str:
    # Salesforce reads plain decimals; repr() would give "1e+20".
    return format(decimal.Decimal(repr(value)) if isinstance(value, float) else value, "f")


def to_bulk_csv_value(value: Any) -> str:
    """One Bulk API 2.0 CSV cell: ``#N/A`` for None (and "", which Bulk would read as "leave unchanged")."""
    if value is None or value == "":
        return BULK_NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | decimal.Decimal):
        return _plain_number(value)
    if isinstance(value, dt.datetime):
        return _sf_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return str(value)


def _as_datetime(value: dt.date | dt.datetime, *, end: bool) -> dt.datetime:
    """A bound as a naive UTC datetime; a bare date as the start of its first or the end of its last second."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    return dt.datetime.combine(value, dt.time(23, 59, 59) if end else dt.time())


def _coerce(value: Any, ftype: str) -> Any:
    """A static value in the form the field takes (and the Bulk CSV writes)."""
    if ftype == "date":
        parsed = _to_date(value)
        return (parsed.date() if isinstance(parsed, dt.datetime) else parsed).isoformat()
    if ftype == "datetime":
        return _sf_datetime(_as_datetime(_to_date(value), end=False))
    if ftype in _INT_TYPES:
        if isinstance(value, bool) or int(value) != decimal.Decimal(str(value)):
            raise ValueError("not an integer")
        return int(value)
    if ftype in _NUMBER_TYPES:
        if isinstance(value, bool):
            raise ValueError("not a number")
        number = decimal.Decimal(str(value))
        if not number.is_finite():
            raise ValueError("not a finite number")
        return int(number) if number == number.to_integral_value() and "." not in str(value) else float(number)
    if ftype == "boolean":
        if not isinstance(value, bool):
            raise ValueError("not true or false")
        return value
    if ftype == "time":
        parsed = value if isinstance(value, dt.time) else dt.time.fromisoformat(str(value).rstrip("Z"))
        return parsed.strftime("%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"
    text = value if isinstance(value, str) else to_bulk_csv_value(value)
    if ftype == "email" and not is_valid_email(text):
        raise ValueError("not a valid email address")
    return text


def _max_length(ftype: str, option: int | None, parameter: int | None) -> int | None:
    limits = [n for n in (option, parameter, _DEFAULT_LENGTH.get(ftype)) if n is not None]
    return min(limits) if limits else None


# ----------------------------------------------------------------------------------------- strategies


def _anonymize(value: Any, ftype: str, length: int | None) -> str:
    rnd = _Random()
    if ftype == "email":
        budget = (length or 80) - len("@.invalid")
        local_n = min(5, max(1, (budget + 1) // 2))
        domain_n = min(5, max(1, budget - local_n))
        return f"{_pick(rnd, _LOWER_ALNUM, local_n)}@{_pick(rnd, _LOWER_ALNUM, domain_n)}.invalid"
    if ftype == "phone":
        # As many digits as the original had, so the number still looks like one from its country.
        n = sum(c in string.digits for c in pg_text(value)) or 10
        return _pick(rnd, string.digits, min(n, length or n))
    return _pick(rnd, _ALNUM, min(5, length or 5))


def _guess_library(field_name: str) -> str:
    name = field_name.lower().removesuffix("__c").replace("_", "")
    if any(part in name for part in ("firstname", "givenname", "forename")) or name == "first":
        return "first_name"
    if any(part in name for part in ("lastname", "surname", "familyname")) or name == "last":
        return "last_name"
    if "city" in name or "town" in name:
        return "city"
    if any(part in name for part in ("company", "employer", "organization", "organisation", "accountname")):
        return "company"
    if name in ("name", "fullname", "contactname", "personname") or name.endswith("fullname"):
        return "full_name"
    return "word"


_LIBRARY_WORDS = {
    "first_name": FIRST_NAMES, "last_name": LAST_NAMES, "city": CITIES, "company": COMPANIES, "word": WORDS,
}


def _draw(rnd: _Seeded, library: str, avoid: str) -> str:
    words = _LIBRARY_WORDS[library]
    index = rnd.below(len(words))
    # Never hand back the original: a name that maps to itself would not be masked at all.
    if words[index].lower() == avoid.lower():
        index = (index + 1) % len(words)
    return words[index]


def _pseudonymize(value: Any, field_name: str, ftype: str, length: int | None, key: bytes, library: str | None) -> str:
    text = pg_text(value)
    if ftype == "email":
        rnd = _Seeded(key, "pseudonymize", "email", text)
        first, last, word = _draw(rnd, "first_name", ""), _draw(rnd, "last_name", ""), _draw(rnd, "word", "")
        address = f"{first}.{last}@{word}.invalid".lower()
        if length is not None and len(address) > length:
            address = f"{first}@{word}.invalid".lower()
        return address
    library = library or _guess_library(field_name)
    rnd = _Seeded(key, "pseudonymize", library, text)
    if library == "full_name":
        first, _, last = text.partition(" ")
        result = f"{_draw(rnd, 'first_name', first)} {_draw(rnd, 'last_name', last)}"
    else:
        result = _draw(rnd, library, text)
    return result[:length] if length else result


def _hash(value: Any, ftype: str, length: int | None, key: bytes) -> str:
    digest = hmac_hex(key, pg_text(value))
    if ftype == "email":
        local_n = 20 if length is None else max(1, min(20, length - len("@hash.invalid")))
        return f"{digest[:local_n]}@hash.invalid"
    return digest[:length] if length else digest


def _random_date(ftype: str, rnd: _Seeded, options: Mapping[str, Any]) -> str:
    start, end = _to_date(options["start"]), _to_date(options["end"])
    if ftype == "date":
        first = start.date() if isinstance(start, dt.datetime) else start
        last = end.date() if isinstance(end, dt.datetime) else end
        return (first + dt.timedelta(days=rnd.below((last - first).days + 1))).isoformat()
    low, high = _as_datetime(start, end=False), _as_datetime(end, end=True)
    seconds = int((high - low).total_seconds())
    return _sf_datetime(low + dt.timedelta(seconds=rnd.below(seconds + 1)))


def _random_number(ftype: str, rnd: _Seeded, options: Mapping[str, Any]) -> int | float:
    low, high, decimals = options["min"], options["max"], options.get("decimals")
    if ftype in _INT_TYPES or (isinstance(low, int) and isinstance(high, int) and decimals is None):
        first, last = math.ceil(low), math.floor(high)
        return first + rnd.below(last - first + 1)
    places = 2 if decimals is None else decimals
    number = round(float(low) + rnd.fraction() * (float(high) - float(low)), places)
    return min(max(number, float(low)), float(high))


def _format_preserving(value: Any, ftype: str, length: int | None, rnd: _Seeded) -> str | int | float:
    text = pg_text(value)
    numeric = ftype in _NUMBER_TYPES
    out = []
    leading = True
    for char in text:
        if char.isdecimal():
            # A number keeps its magnitude: its first digit stays non-zero unless it was zero.
            nonzero = numeric and leading and char != "0"
            out.append(_pick(rnd, "123456789" if nonzero else string.digits))
            leading = False
        elif char.isalpha() and not numeric:
            out.append(_pick(rnd, string.ascii_uppercase if char.isupper() else string.ascii_lowercase))
        else:
            out.append(char)
    result = "".join(out)
    if numeric:
        return int(result) if ftype in _INT_TYPES else float(result)
    # An address keeps its length and so its validity; cutting it would break it.
    return result if ftype == "email" or not length else result[:length]


def _mask(
    strategy: str, value: Any, *, field_name: str, ftype: str, record_id: str, key: bytes,
    options: Mapping[str, Any], length: int | None,
) -> Any:
    if strategy == "static":
        static = options.get("value")
        return None if static is None else _coerce(static, ftype)
    if value is None or value == "" or strategy == "nullify":
        # Nothing personal in an empty field, and inventing a value would make it look as if there was.
        return None
    if strategy == "anonymize":
        return _anonymize(value, ftype, length)
    if strategy == "pseudonymize":
        return _pseudonymize(value, field_name, ftype, length, key, options.get("library"))
    if strategy == "hash":
        return _hash(value, ftype, length, key)
    rnd = _Seeded(key, strategy, str(record_id), field_name)
    if strategy == "random_date":
        return _random_date(ftype, rnd, options)
    if strategy == "random_number":
        return _random_number(ftype, rnd, options)
    return _format_preserving(value, ftype, length, rnd)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or not key:
        raise ValueError("the masking key must be non-empty bytes")


def mask_value(
    strategy: str,
    value: Any,
    *,
    field_name: str,
    field_type: str,
    record_id: str,
    key: bytes,
    options: Mapping[str, Any] | None = None,
    field_length: int | None = None,
) -> Any:
    """The masked replacement of one field value, valid for the field; None means "set to null".

    :param strategy: one of :data:`STRATEGIES`.
    :param value: the original value; None and "" stay None (nothing to mask) except with ``static``.
    :param field_name: the field's API name; picks pseudonymize's library and seeds per-record strategies.
    :param field_type: the Salesforce describe type (string, email, phone, date, datetime, double, ...).
    :param record_id: the record's Id; seeds random_date, random_number and format_preserving.
    :param key: the policy's masking key (HMAC key).
    :param options: the strategy's options from the policy (see :func:`validate_options`).
    :param field_length: the field's length from describe; the smaller of it and ``field_length`` option wins.
    """
    _check_key(key)
    options = options or {}
    problems = validate_options(strategy, options) or validate_field_type(
        strategy, field_type, options, field_length=field_length
    )
    if problems:
        raise ValueError(f"{field_name}: " + "; ".join(problems))
    ftype = field_type.lower()
    length = _max_length(ftype, options.get("field_length"), field_length)
    return _mask(
        strategy, value, field_name=field_name, ftype=ftype, record_id=record_id, key=bytes(key),
        options=options, length=length,
    )


class Masker:
    """Masks whole records with one policy's strategies, checked once up front rather than per value.

    :param strategies: field API name -> ``(strategy, options)`` (or just the strategy name).
    :param field_types: field API name -> Salesforce describe type; names match case-insensitively.
    :param key: the policy's masking key (HMAC key).
    :param field_lengths: field API name -> length from describe, to cap masked text.
    """

    def __init__(
        self,
        strategies: Mapping[str, tuple[str, Mapping[str, Any] | None] | str],
        field_types: Mapping[str, str],
        key: bytes,
        *,
        field_lengths: Mapping[str, int] | None = None,
    ) -> None:
        _check_key(key)
        self._key = bytes(key)
        types = {name.lower(): ftype for name, ftype in field_types.items()}
        lengths = {name.lower(): n for name, n in (field_lengths or {}).items()}
        self._plan: list[tuple[str, str, str, Mapping[str, Any], int | None]] = []
        problems = []
        for field, spec in strategies.items():
            strategy, options = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1] or {}))
            ftype = types.get(field.lower())
            if ftype is None:
                problems.append(f"{field}: no field type (is the field on the object?)")
                continue
            found = validate_options(strategy, options) or validate_field_type(
                strategy, ftype, options, field_length=lengths.get(field.lower())
            )
            problems.extend(f"{field}: {problem}" for problem in found)
            length = _max_length(ftype.lower(), options.get("field_length"), lengths.get(field.lower()))
            self._plan.append((field, strategy, ftype.lower(), options, length))
        if problems:
            raise ValueError("invalid masking: " + "; ".join(problems))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(field for field, *_ in self._plan)

    @property
    def columns(self) -> tuple[str, ...]:
        """The Bulk update CSV header."""
        return ("Id", *self.fields)

    def mask_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """``{"Id": ..., field: masked, ...}`` for the masked fields only; reads Connect rows (sfid, lower case) too."""
        lowered = {name.lower(): value for name, value in record.items()}
        record_id = lowered.get("id") or lowered.get("sfid")
        if not record_id:
            raise ValueError("record has no Id")
        masked: dict[str, Any] = {"Id": record_id}
        for field, strategy, ftype, options, length in self._plan:
            masked[field] = _mask(
                strategy, lowered.get(field.lower()), field_name=field, ftype=ftype, record_id=record_id,
                key=self._key, options=options, length=length,
            )
        return masked

    def csv_row(self, record: Mapping[str, Any]) -> list[str]:
        """The record's Bulk update CSV row, in :attr:`columns` order."""
        masked = self.mask_record(record)
        return [to_bulk_csv_value(masked[column]) for column in self.columns]
