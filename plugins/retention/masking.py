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

:data:`STRATEGIES` is the registry: each strategy is declared once (its options model, the field types it
can write, its function), and the policy model and its describe checks read it. Adding one is one options
class, one function and one :class:`Strategy` entry here (and its test).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hmac
import math
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from retention.transforms import hmac_hex, pg_text

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
# Salesforce's own limits, used when neither describe nor the policy gives a length.
_DEFAULT_LENGTH = {"email": 80, "phone": 40}
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


def _parse(strategy: str, options: Mapping[str, Any] | None) -> tuple[Options | None, list[str]]:
    """The strategy's options model built from ``options``, or the problems that prevent it."""
    entry = STRATEGIES.get(strategy)
    if entry is None:
        return None, [f"unknown masking strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}"]
    try:
        return entry.options.model_validate({**(options or {}), "strategy": strategy}), []
    except ValidationError as exc:
        return None, [_problem(strategy, err) for err in exc.errors(include_url=False)]


def _problem(strategy: str, err: Any) -> str:
    name = ".".join(str(part) for part in err["loc"])
    if err["type"] == "missing":
        return f"{strategy}: option {name!r} is required"
    if err["type"] == "extra_forbidden":
        return f"{strategy}: unknown option {name!r} (allowed: {', '.join(STRATEGIES[strategy].options.names())})"
    if err["type"] == "value_error":  # the options models' own checks say which strategy and option they are
        return str(err["ctx"]["error"])
    return f"{strategy}: {name}: {err['msg'][:1].lower()}{err['msg'][1:]}"


def validate_options(strategy: str, options: Mapping[str, Any] | None) -> list[str]:
    """Problems with a strategy and its options, as messages for the policy's import error; [] if fine."""
    return _parse(strategy, options)[1]


def validate_field_type(
    strategy: str, field_type: str, options: Mapping[str, Any] | None = None, *, field_length: int | None = None
) -> list[str]:
    """Problems with using ``strategy`` on a Salesforce field of ``field_type`` (from describe); [] if fine."""
    ftype = (field_type or "").lower()
    if ftype not in MASKABLE_TYPES:
        if ftype in ("id", "reference"):
            return [f"{strategy}: {ftype} fields are identifiers or owners and cannot be masked"]
        return [f"{strategy}: field type {field_type!r} cannot be masked"]
    entry = STRATEGIES.get(strategy)
    if entry is None or ftype not in entry.field_types:
        usable = sorted(name for name, other in STRATEGIES.items() if ftype in other.field_types)
        return [f"{strategy}: not valid for {ftype} fields (use one of {', '.join(usable)})"]
    parsed, _ = _parse(strategy, options)
    if parsed is None or entry.check is None:  # bad options are validate_options' to report
        return []
    problem = entry.check(parsed, ftype, _max_length(ftype, parsed.field_length, field_length))
    return [problem] if problem else []


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


class Options(BaseModel):
    """A strategy's options as a policy writes them; each strategy subclasses it with its ``strategy`` Literal,
    so that the policy model validates ``mask`` entries as a union discriminated by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str
    # Caps the masked text below the field's own length (every strategy takes it).
    field_length: int | None = Field(None, ge=1)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The options a policy may give, this strategy's own first."""
        own = tuple(name for name in cls.model_fields if name not in ("strategy", "field_length"))
        return (*own, "field_length")

    @property
    def options(self) -> dict[str, Any]:
        """The options given, as :func:`mask_value` and :class:`Masker` take them."""
        return self.model_dump(exclude={"strategy"}, exclude_none=True)


@dataclass(frozen=True)
class Target:
    """The field a value is masked for: what a strategy reads besides the value and its options."""

    name: str
    ftype: str
    record_id: str
    key: bytes
    length: int | None

    def seeded(self, strategy: str) -> _Seeded:
        """A stream seeded by (key, record id, field): a retry draws what the first attempt drew."""
        return _Seeded(self.key, strategy, str(self.record_id), self.name)


class Anonymize(Options):
    strategy: Literal["anonymize"] = "anonymize"


def _anonymize(value: Any, options: Anonymize, target: Target) -> str:
    rnd = _Random()
    ftype, length = target.ftype, target.length
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


class Pseudonymize(Options):
    strategy: Literal["pseudonymize"] = "pseudonymize"
    # Which word library; unset, it is guessed from the field's name (FirstName, MailingCity, ...).
    library: str | None = None

    @field_validator("library")
    @classmethod
    def _library(cls, value: str | None) -> str | None:
        if value is not None and value not in LIBRARIES:
            raise ValueError(f"unknown pseudonymize library {value!r} (expected {', '.join(LIBRARIES)})")
        return value


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


def _pseudonymize(value: Any, options: Pseudonymize, target: Target) -> str:
    text, key, length = pg_text(value), target.key, target.length
    if target.ftype == "email":
        rnd = _Seeded(key, "pseudonymize", "email", text)
        first, last, word = _draw(rnd, "first_name", ""), _draw(rnd, "last_name", ""), _draw(rnd, "word", "")
        address = f"{first}.{last}@{word}.invalid".lower()
        if length is not None and len(address) > length:
            address = f"{first}@{word}.invalid".lower()
        return address
    library = options.library or _guess_library(target.name)
    rnd = _Seeded(key, "pseudonymize", library, text)
    if library == "full_name":
        first, _, last = text.partition(" ")
        result = f"{_draw(rnd, 'first_name', first)} {_draw(rnd, 'last_name', last)}"
    else:
        result = _draw(rnd, library, text)
    return result[:length] if length else result


class Hash(Options):
    strategy: Literal["hash"] = "hash"


def _hash(value: Any, options: Hash, target: Target) -> str:
    digest = hmac_hex(target.key, pg_text(value))
    length = target.length
    if target.ftype == "email":
        local_n = 20 if length is None else max(1, min(20, length - len("@hash.invalid")))
        return f"{digest[:local_n]}@hash.invalid"
    return digest[:length] if length else digest


class Nullify(Options):
    strategy: Literal["nullify"] = "nullify"


def _nullify(value: Any, options: Nullify, target: Target) -> None:
    return None


class Static(Options):
    strategy: Literal["static"] = "static"
    value: Any = Field(examples=["REDACTED"])

    @field_validator("value")
    @classmethod
    def _scalar(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | int | float | decimal.Decimal | dt.date | dt.time):
            kind = type(value).__name__
            raise ValueError(f"static value must be a single string, number, boolean or date, got {kind}")
        return value


def _static(value: Any, options: Static, target: Target) -> Any:
    return None if options.value is None else _coerce(options.value, target.ftype)


def _check_static(options: Static, ftype: str, length: int | None) -> str | None:
    if options.value is None:
        return None
    try:
        value = _coerce(options.value, ftype)
    except (TypeError, ValueError) as exc:
        return f"static: value {options.value!r} is not valid for a {ftype} field ({exc})"
    if isinstance(value, str) and length is not None and len(value) > length:
        return f"static: value is longer than the field's {length} characters"
    return None


class RandomDate(Options):
    strategy: Literal["random_date"] = "random_date"
    start: dt.date = Field(examples=[dt.date(1950, 1, 1)])
    end: dt.date = Field(examples=[dt.date(2000, 12, 31)])

    @model_validator(mode="after")
    def _range(self) -> RandomDate:
        if self.start > self.end:
            raise ValueError(f"random_date start {self.start} is after end {self.end}")
        return self


def _random_date(value: Any, options: RandomDate, target: Target) -> str:
    rnd = target.seeded("random_date")
    if target.ftype == "date":
        days = (options.end - options.start).days
        return (options.start + dt.timedelta(days=rnd.below(days + 1))).isoformat()
    low, high = _as_datetime(options.start, end=False), _as_datetime(options.end, end=True)
    seconds = int((high - low).total_seconds())
    return _sf_datetime(low + dt.timedelta(seconds=rnd.below(seconds + 1)))


class RandomNumber(Options):
    strategy: Literal["random_number"] = "random_number"
    min: int | float = Field(examples=[0])
    max: int | float = Field(examples=[100])
    # Places after the point for a non-integer field; unset: 2, or a whole number when min and max are.
    decimals: int | None = Field(None, ge=0)

    @field_validator("min", "max", mode="before")
    @classmethod
    def _number(cls, value: Any, info: ValidationInfo) -> Any:
        if not _is_number(value):  # not "1", which pydantic would read as a number
            raise ValueError(f"random_number {info.field_name} must be a number, got {value!r}")
        return value

    @model_validator(mode="after")
    def _range(self) -> RandomNumber:
        if self.min > self.max:
            raise ValueError(f"random_number min {self.min} is greater than max {self.max}")
        return self


def _random_number(value: Any, options: RandomNumber, target: Target) -> int | float:
    rnd = target.seeded("random_number")
    low, high, decimals = options.min, options.max, options.decimals
    if target.ftype in _INT_TYPES or (isinstance(low, int) and isinstance(high, int) and decimals is None):
        first, last = math.ceil(low), math.floor(high)
        return first + rnd.below(last - first + 1)
    places = 2 if decimals is None else decimals
    number = round(float(low) + rnd.fraction() * (float(high) - float(low)), places)
    return min(max(number, float(low)), float(high))


def _check_random_number(options: RandomNumber, ftype: str, length: int | None) -> str | None:
    if ftype in _INT_TYPES and math.ceil(options.min) > math.floor(options.max):
        return f"random_number: no integer between {options.min} and {options.max}"
    return None


class FormatPreserving(Options):
    strategy: Literal["format_preserving"] = "format_preserving"


def _format_preserving(value: Any, options: FormatPreserving, target: Target) -> str | int | float:
    rnd = target.seeded("format_preserving")
    text, ftype = pg_text(value), target.ftype
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
    return result if ftype == "email" or not target.length else result[:target.length]


@dataclass(frozen=True)
class Strategy:
    """One masking strategy, declared once: the policy model, the describe checks and :class:`Masker` read it.

    :param options: its options model; the ``strategy`` Literal is its name in a policy.
    :param field_types: the Salesforce describe types it can write a valid value to.
    :param mask: ``(value, options, target) -> replacement``, None meaning "set to null".
    :param check: a problem with these options on a field of this type and length, beyond the type itself.
    :param fills_empty: it writes into empty fields too; the others leave an empty field empty.
    :param nulls: it writes null, which a required (not nillable) field refuses.
    """

    options: type[Options]
    field_types: frozenset[str]
    mask: Callable[[Any, Any, Target], Any]
    check: Callable[[Any, str, int | None], str | None] | None = None
    fills_empty: bool = False
    nulls: bool = False

    @property
    def name(self) -> str:
        return self.options.model_fields["strategy"].default


_TEXT = _TEXT_TYPES | {"email"}
_DATES = frozenset({"date", "datetime"})
_CHOICES = frozenset({"picklist", "multipicklist", "time"})
# Ids and lookups are absent on purpose: Privacy Center only masks mutable fields, and rewriting an owner or a
# parent would move the record.
STRATEGIES: dict[str, Strategy] = {entry.name: entry for entry in (
    Strategy(Anonymize, _TEXT | {"phone"}, _anonymize),
    Strategy(Pseudonymize, _TEXT, _pseudonymize),
    Strategy(Hash, _TEXT | {"phone"}, _hash),
    # A checkbox cannot be null in Salesforce.
    Strategy(Nullify, _TEXT | {"phone"} | _DATES | _NUMBER_TYPES | _CHOICES, _nullify, nulls=True),
    Strategy(Static, _TEXT | {"phone"} | _DATES | _NUMBER_TYPES | _CHOICES | {"boolean"}, _static,
             check=_check_static, fills_empty=True),
    Strategy(RandomDate, _DATES, _random_date),
    Strategy(RandomNumber, _NUMBER_TYPES, _random_number, check=_check_random_number),
    Strategy(FormatPreserving, _TEXT | {"phone"} | _NUMBER_TYPES, _format_preserving),
)}
MASKABLE_TYPES = frozenset().union(*(entry.field_types for entry in STRATEGIES.values()))


def _mask(entry: Strategy, options: Options, value: Any, target: Target) -> Any:
    if (value is None or value == "") and not entry.fills_empty:
        # Nothing personal in an empty field, and inventing a value would make it look as if there was.
        return None
    return entry.mask(value, options, target)


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
    parsed, problems = _parse(strategy, options)
    problems = problems or validate_field_type(strategy, field_type, options, field_length=field_length)
    if problems:
        raise ValueError(f"{field_name}: " + "; ".join(problems))
    ftype = field_type.lower()
    length = _max_length(ftype, parsed.field_length, field_length)
    return _mask(STRATEGIES[strategy], parsed, value, Target(field_name, ftype, record_id, bytes(key), length))


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
        self._plan: list[tuple[str, Strategy, Options, str, int | None]] = []
        problems = []
        for field, spec in strategies.items():
            strategy, options = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1] or {}))
            ftype = types.get(field.lower())
            if ftype is None:
                problems.append(f"{field}: no field type (is the field on the object?)")
                continue
            parsed, found = _parse(strategy, options)
            found = found or validate_field_type(strategy, ftype, options, field_length=lengths.get(field.lower()))
            problems.extend(f"{field}: {problem}" for problem in found)
            if not found:
                length = _max_length(ftype.lower(), parsed.field_length, lengths.get(field.lower()))
                self._plan.append((field, STRATEGIES[strategy], parsed, ftype.lower(), length))
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
        for field, entry, options, ftype, length in self._plan:
            target = Target(field, ftype, record_id, self._key, length)
            masked[field] = _mask(entry, options, lowered.get(field.lower()), target)
        return masked
