"""The policy's ``select.where`` filter: a SOQL WHERE-clause subset, parsed into a small AST.

A policy's filter decides which records are deleted, so it is never pasted into a query as text:
it is parsed once at load time (a typo is a policy error, not a failed run), then re-rendered from
the AST, either as canonical SOQL with escaped literals for the Bulk API source, or as Postgres SQL
with every value passed as a parameter for the Heroku Connect mirror.

Grammar (as SOQL): ``field op value`` with ``= != <> < <= > >=``, ``field [NOT] IN (v, ...)``,
``field LIKE 'pattern'``, ``AND`` / ``OR`` / ``NOT`` and parentheses. Values: ``null``, ``true`` /
``false``, numbers, single-quoted strings with SOQL backslash escapes, dates (``2024-01-31``),
datetimes (``2024-01-31T00:00:00Z``) and relative date literals (``TODAY``, ``LAST_N_DAYS:30``, ...).
Fields are plain API names: no relationship paths, no functions. Mixing AND and OR without
parentheses is an error, as it is in SOQL.

An ID or reference field may also be tested against another object's records with a semi-join or an
anti-join, ``Id NOT IN (SELECT ContactId FROM Case [WHERE ...])``: the way a policy keeps out records the
platform would refuse to delete (a contact with cases). As in SOQL: at most two of them, none nested, one
field in each sub-select; its object must be mapped in Heroku Connect when the policy reads the mirror.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopg import sql


class FilterError(ValueError):
    """A filter outside the supported subset; ``pos`` is the 0-based offset of the offending token."""

    def __init__(self, reason: str, pos: int, text: str = ""):
        self.reason = reason
        self.pos = pos
        self.text = text
        super().__init__(f"column {pos + 1}: {reason}")


# ------------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Value:
    """A filter value. ``kind`` is string, number, boolean, null, date, datetime or relative.

    Relative dates carry ``(NAME, n or None)``. Strings also carry ``like``: the same text as a
    backslash-escaped LIKE pattern, because ``\\%`` (a literal percent) and ``%`` (a wildcard) are
    the same character once unescaped.
    """

    kind: str
    value: Any
    like: str | None = None
    pos: int = field(default=0, compare=False)

    def __post_init__(self):
        if self.kind == "string" and self.like is None:  # built in code: every character literal
            object.__setattr__(self, "like", re.sub(r"([\\%_])", r"\\\1", self.value))


@dataclass(frozen=True)
class SubSelect:
    """``(SELECT field FROM sobject [WHERE where])`` on the right of IN / NOT IN."""

    field: str
    sobject: str
    where: Expr | None
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # = != < <= > >= IN, NOT IN, LIKE
    value: Value | tuple[Value, ...] | SubSelect
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    item: Expr


Expr = Comparison | And | Or | Not

# ---------------------------------------------------------------------------------------------- tokens

RELATIVE_DATES = frozenset({
    "TODAY", "YESTERDAY", "TOMORROW", "LAST_WEEK", "THIS_WEEK", "NEXT_WEEK", "LAST_MONTH", "THIS_MONTH",
    "NEXT_MONTH", "LAST_90_DAYS", "NEXT_90_DAYS", "THIS_YEAR", "LAST_YEAR", "NEXT_YEAR",
})
RELATIVE_N_DATES = frozenset({"LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO"})
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IN", "LIKE", "NULL", "TRUE", "FALSE", "SELECT", "FROM", "WHERE"})
# SOQL's limits on semi-joins and anti-joins in one query.
MAX_SUBSELECTS = 2
_OPS = {"=": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\w:])
  | (?P<number>[-+]?\d+(?:\.\d+)?)(?![\w.])
  | (?P<ident>[A-Za-z][A-Za-z0-9_]*)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),:.])
    """,
    re.VERBOSE,
)
_DATETIME_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:Z|([+-])(\d\d):?(\d\d))")
# SOQL's escape sequences inside quoted strings (letters in either case, and \uXXXX); anything else after a
# backslash is an error, and \% \_ are escapes of a LIKE pattern only ("Quoted String Escape Sequences").
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_UNESCAPES = {v: "\\" + k for k, v in _ESCAPES.items() if k != '"'}


@dataclass(frozen=True)
class _Token:
    kind: str  # ident, string, number, date, datetime, op, punct, eof
    text: str
    pos: int
    value: Any = None

    def kw(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.upper() in words


def _describe(tok: _Token) -> str:
    return "end of filter" if tok.kind == "eof" else repr(tok.text)


def _tokenize(text: str) -> list[_Token]:
    """All tokens; a lexical error becomes an `error` token so the parser reports earlier problems first."""
    tokens: list[_Token] = []
    try:
        _lex(text, tokens)
    except FilterError as exc:
        tokens.append(_Token("error", text[exc.pos : exc.pos + 1], exc.pos, exc))
    tokens.append(_Token("eof", "", len(text)))
    return tokens


def _lex(text: str, tokens: list[_Token]) -> None:
    pos = 0
    while pos < len(text):
        if text[pos] == "'":
            tok = _string(text, pos)
            tokens.append(tok)
            pos += len(tok.text)
            continue
        m = _TOKEN_RE.match(text, pos)
        if not m:
            ch = text[pos]
            hint = " (use single quotes for strings)" if ch == '"' else ""
            raise FilterError(f"unexpected character {ch!r}{hint}", pos, text)
        kind, word = m.lastgroup, m.group(m.lastgroup)
        if kind != "ws":
            tokens.append(_Token(kind, word, pos, _scalar(kind, word, text, pos)))
        pos = m.end()


def _string(text: str, start: int) -> _Token:
    """A quoted literal; value is (plain text, LIKE pattern with backslash escapes)."""
    plain, like, i = [], [], start + 1
    while i < len(text):
        ch = text[i]
        if ch == "'":
            return _Token("string", text[start : i + 1], start, ("".join(plain), "".join(like)))
        if ch == "\\":
            esc = text[i + 1 : i + 2]
            code = text[i + 2 : i + 6]
            if esc in ("%", "_"):
                plain.append(esc)
                like.append("\\" + esc)
            elif esc in ("u", "U") and re.fullmatch(r"[0-9A-Fa-f]{4}", code):  # \uXXXX: one Unicode character
                char = chr(int(code, 16))
                plain.append(char)
                like.append("\\" + char if char in "\\%_" else char)
                i += 6
                continue
            elif esc.lower() in _ESCAPES:  # \N, \R, \T, \B, \F are the same escapes as their lower case
                plain.append(_ESCAPES[esc.lower()])
                like.append("\\\\" if esc == "\\" else _ESCAPES[esc.lower()])
            else:
                raise FilterError(f"invalid escape sequence '\\{esc}' in string literal", i, text)
            i += 2
            continue
        plain.append(ch)
        like.append(ch)
        i += 1
    raise FilterError("unterminated string literal", start, text)


def _scalar(kind: str, word: str, text: str, pos: int) -> Any:
    try:
        if kind == "number":
            return Decimal(word) if "." in word else int(word)
        if kind == "date":
            return date.fromisoformat(word)
        if kind == "datetime":
            y, mo, d, h, mi, s, frac, sign, oh, om = _DATETIME_RE.fullmatch(word).groups()
            tz = UTC
            if sign:
                offset = timedelta(hours=int(oh), minutes=int(om))
                tz = timezone(-offset if sign == "-" else offset)
            micro = int((frac or "0").ljust(6, "0")[:6])
            return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro, tzinfo=tz).astimezone(UTC)
    except ValueError as exc:
        raise FilterError(f"invalid {kind} {word!r} ({exc})", pos, text) from None
    return None


# ---------------------------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.subselects = 0
        self.nested = False

    def peek(self, ahead: int = 0) -> _Token:
        tok = self.tokens[min(self.i + ahead, len(self.tokens) - 1)]
        if tok.kind == "error":
            raise tok.value
        return tok

    def advance(self) -> _Token:
        tok = self.peek()
        self.i += 1
        return tok

    def error(self, reason: str, tok: _Token | None = None) -> FilterError:
        return FilterError(reason, (tok or self.peek()).pos, self.text)

    def expect(self, text: str) -> _Token:
        tok = self.peek()
        if tok.kind != "punct" or tok.text != text:
            raise self.error(f"expected '{text}', found {_describe(tok)}")
        return self.advance()

    def filter(self) -> Expr:
        if self.peek().kind == "eof":
            raise self.error("empty filter")
        expr = self.condition()
        tok = self.peek()
        if tok.kind != "eof":
            hint = ""
            if tok.kind == "string" and self.tokens[self.i - 1].kind == "string":
                hint = " (a quote inside a string is written \\', not '')"
            raise self.error(f"expected AND, OR or end of filter, found {_describe(tok)}{hint}")
        return expr

    def condition(self) -> Expr:
        """SOQL refuses `a AND b OR c`: once a connective is chosen, the other needs parentheses."""
        items, joiner = [self.unary()], None
        while self.peek().kw("AND", "OR"):
            tok = self.peek()
            word = tok.text.upper()
            if joiner and word != joiner:
                raise self.error(f"{word} after {joiner}: mixing AND and OR needs parentheses", tok)
            joiner = word
            self.advance()
            items.append(self.unary())
        if joiner is None:
            return items[0]
        return And(tuple(items)) if joiner == "AND" else Or(tuple(items))

    def unary(self) -> Expr:
        if self.peek().kw("NOT"):
            self.advance()
            return Not(self.unary())
        if self.peek().kind == "punct" and self.peek().text == "(":
            self.advance()
            inner = self.condition()
            self.expect(")")
            return inner
        return self.comparison()

    def field_name(self) -> _Token:
        tok = self.advance()
        if tok.kind != "ident" or tok.text.upper() in _KEYWORDS:
            raise self.error(f"expected a field name, found {_describe(tok)}", tok)
        nxt = self.peek()
        if nxt.kind == "punct" and nxt.text == "(":
            raise self.error(f"functions are not supported in a policy filter ({tok.text}(...))", tok)
        if nxt.kind == "punct" and nxt.text == ".":
            raise self.error("relationship paths are not supported in a policy filter; use a field of the object", nxt)
        return tok

    def comparison(self) -> Comparison:
        name = self.field_name()
        tok = self.peek()
        if tok.kind == "op":
            self.advance()
            op = _OPS[tok.text]
            value = self.value()
            if value.kind == "null" and op not in ("=", "!="):
                raise self.error(f"null can only be compared with = or !=, not {tok.text}", tok)
            if value.kind == "boolean" and op not in ("=", "!="):
                raise self.error(f"true/false can only be compared with = or !=, not {tok.text}", tok)
            return Comparison(name.text, op, value, name.pos)
        if tok.kw("IN"):
            self.advance()
            return Comparison(name.text, "IN", self.subselect() or self.value_list(), name.pos)
        if tok.kw("NOT") and self.peek(1).kw("IN"):
            self.i += 2
            return Comparison(name.text, "NOT IN", self.subselect() or self.value_list(), name.pos)
        if tok.kw("LIKE"):
            self.advance()
            value = self.value(like=True)
            if value.kind != "string":
                raise FilterError("LIKE needs a quoted string pattern", value.pos, self.text)
            return Comparison(name.text, "LIKE", value, name.pos)
        raise self.error(
            f"expected an operator (= != < <= > >= IN NOT IN LIKE) after {name.text}, found {_describe(tok)}"
        )

    def subselect(self) -> SubSelect | None:
        """``(SELECT field FROM Object [WHERE ...])``, or None when a value list follows IN."""
        if not (self.peek().kind == "punct" and self.peek().text == "(" and self.peek(1).kw("SELECT")):
            return None
        start = self.expect("(")
        if self.nested:
            raise self.error("a sub-select cannot contain another one", start)
        self.subselects += 1
        if self.subselects > MAX_SUBSELECTS:
            raise self.error(f"at most {MAX_SUBSELECTS} sub-selects (IN / NOT IN (SELECT ...)) in a filter", start)
        self.advance()  # SELECT
        name = self.field_name()
        if self.peek().kind == "punct" and self.peek().text == ",":
            raise self.error("a sub-select selects one ID or reference field")
        if not self.peek().kw("FROM"):
            raise self.error(f"expected FROM after the sub-select's field, found {_describe(self.peek())}")
        self.advance()
        sobject = self.field_name()
        where = None
        if self.peek().kw("WHERE"):
            self.advance()
            self.nested = True
            try:
                where = self.condition()
            finally:
                self.nested = False
        self.expect(")")
        return SubSelect(name.text, sobject.text, where, start.pos)

    def value_list(self) -> tuple[Value, ...]:
        self.expect("(")
        values = [self.value()]
        while self.peek().kind == "punct" and self.peek().text == ",":
            self.advance()
            values.append(self.value())
        self.expect(")")
        return tuple(values)

    def value(self, like: bool = False) -> Value:
        tok = self.advance()
        if tok.kind == "string":
            if not like and any(m.group(1) in "%_" for m in re.finditer(r"\\(.)", tok.text)):
                raise self.error("\\% and \\_ are escapes of a LIKE pattern only; write % or _ as they are", tok)
            plain, pattern = tok.value
            return Value("string", plain, pattern, tok.pos)
        if tok.kind in ("number", "date", "datetime"):
            return Value(tok.kind, tok.value, None, tok.pos)
        word = tok.text.upper() if tok.kind == "ident" else ""
        if word == "NULL":
            return Value("null", None, None, tok.pos)
        if word in ("TRUE", "FALSE"):
            return Value("boolean", word == "TRUE", None, tok.pos)
        if word in RELATIVE_DATES:
            return Value("relative", (word, None), None, tok.pos)
        if word in RELATIVE_N_DATES:
            self.expect(":")
            n = self.advance()
            if n.kind != "number" or not isinstance(n.value, int) or n.value < 0 or n.text[0] in "+-":
                raise self.error(f"{word} needs a non-negative whole number of days, e.g. {word}:30", n)
            return Value("relative", (word, n.value), None, tok.pos)
        if tok.kind == "ident":
            raise self.error(f"expected a value, found {_describe(tok)} (quote strings: '{tok.text}')", tok)
        raise self.error(f"expected a value, found {_describe(tok)}", tok)


def parse(text: str) -> Expr:
    """Parse a policy filter; raises FilterError naming the position and the reason."""
    if not isinstance(text, str):
        raise FilterError(f"expected a string, got {type(text).__name__}", 0, "")
    return _Parser(text).filter()


def comparisons(expr: Expr) -> list[Comparison]:
    """Every comparison of the filter's own object, in source order (not those inside sub-selects)."""
    if isinstance(expr, Comparison):
        return [expr]
    if isinstance(expr, Not):
        return comparisons(expr.item)
    return [c for item in expr.items for c in comparisons(item)]


def fields(expr: Expr) -> set[str]:
    """The field names of the filter's own object the filter reads, as written."""
    return {c.field for c in comparisons(expr)}


def subselects(expr: Expr) -> list[SubSelect]:
    return [c.value for c in comparisons(expr) if isinstance(c.value, SubSelect)]


def other_objects(expr: Expr) -> dict[str, set[str]]:
    """Fields read of other objects through sub-selects: {object: {fields}} (those objects must be readable,
    and mapped in Heroku Connect when the policy reads the mirror)."""
    out: dict[str, set[str]] = {}
    for sub in subselects(expr):
        names = out.setdefault(sub.sobject, set())
        names.add(sub.field)
        if sub.where is not None:
            names |= fields(sub.where)
    return out


# ----------------------------------------------------------------------------------------------- SOQL


def _soql_string(text: str) -> str:
    return "'" + "".join(_UNESCAPES.get(ch, ch) for ch in text) + "'"


def _soql_like(pattern: str) -> str:
    """A backslash-escaped LIKE pattern back to a SOQL string literal."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append("\\\\" if nxt == "\\" else "\\" + nxt)
            i += 2
            continue
        out.append(_UNESCAPES.get(ch, ch))
        i += 1
    return "'" + "".join(out) + "'"


def _soql_datetime(value: datetime) -> str:
    value = value.astimezone(UTC)
    frac = f".{value.microsecond // 1000:03d}" if value.microsecond else ""
    return value.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def _soql_literal(lit: Value, like: bool = False) -> str:
    if lit.kind == "string":
        return _soql_like(lit.like) if like else _soql_string(lit.value)
    if lit.kind == "null":
        return "null"
    if lit.kind == "boolean":
        return "true" if lit.value else "false"
    if lit.kind == "number":
        return str(lit.value)
    if lit.kind == "date":
        return lit.value.isoformat()
    if lit.kind == "datetime":
        return _soql_datetime(lit.value)
    name, n = lit.value
    return name if n is None else f"{name}:{n}"


def to_soql(expr: Expr, *, today: date | None = None, types: Mapping[str, str] | None = None,
            relation_types: Callable[[str], Mapping[str, str]] | None = None) -> str:
    """Canonical SOQL for the filter: keywords upper-case, ``!=`` for ``<>``, literals re-escaped.

    :param today: when given, relative date literals become the absolute days they stand for on that UTC day
        (``CreatedDate = LAST_N_DAYS:30`` → ``(CreatedDate >= 2024-05-03T00:00:00Z AND CreatedDate <
        2024-06-02T00:00:00Z)``), the same range ``to_sql`` reads from the mirror; then ``types`` (field ->
        Salesforce type) says which are datetimes, and ``relation_types(object)`` the same for sub-selects.
    """

    def absolute(field: str, op: str, lit: Value, kinds: Mapping[str, str]) -> str:
        ftype = kinds.get(field.lower())
        if ftype not in ("date", "datetime"):
            raise ValueError(f"{field}: a relative date needs a date or datetime field, not {ftype or 'unknown'}")
        lo, hi = relative_range(*lit.value, today)

        def day(d: date) -> str:
            return f"{d:%Y-%m-%d}T00:00:00Z" if ftype == "datetime" else f"{d:%Y-%m-%d}"

        if op == "=":
            return f"({field} >= {day(lo)} AND {field} < {day(hi)})"
        if op == "!=":
            return f"({field} < {day(lo)} OR {field} >= {day(hi)} OR {field} = null)"
        bound, soql_op = {"<": (lo, "<"), "<=": (hi, "<"), ">": (hi, ">="), ">=": (lo, ">=")}[op]
        return f"{field} {soql_op} {day(bound)}"

    def render(node: Expr, nested: bool, kinds: Mapping[str, str]) -> str:
        if isinstance(node, Comparison):
            if isinstance(node.value, SubSelect):
                sub = node.value
                inner = {k.lower(): v for k, v in (relation_types(sub.sobject) if relation_types else {}).items()}
                where = f" WHERE {render(sub.where, False, inner)}" if sub.where is not None else ""
                return f"{node.field} {node.op} (SELECT {sub.field} FROM {sub.sobject}{where})"
            if isinstance(node.value, tuple):
                if today is not None and any(v.kind == "relative" for v in node.value):
                    raise ValueError(f"{node.field}: relative date literals cannot be listed in {node.op}")
                values = ", ".join(_soql_literal(v) for v in node.value)
                return f"{node.field} {node.op} ({values})"
            if today is not None and node.value.kind == "relative":
                return absolute(node.field, node.op, node.value, kinds)
            return f"{node.field} {node.op} {_soql_literal(node.value, like=node.op == 'LIKE')}"
        if isinstance(node, Not):
            return f"NOT ({render(node.item, False, kinds)})"
        joiner = " AND " if isinstance(node, And) else " OR "
        text = joiner.join(render(item, True, kinds) for item in node.items)
        return f"({text})" if nested else text

    return render(expr, False, {k.lower(): v for k, v in (types or {}).items()})


# ------------------------------------------------------------------------------------------- Postgres

# Salesforce types stored as text in the Heroku Connect mirror.
TEXT_TYPES = frozenset({
    "string", "email", "phone", "url", "picklist", "multipicklist", "combobox", "textarea", "encryptedstring",
})
ID_TYPES = frozenset({"id", "reference"})
NUMBER_TYPES = frozenset({"int", "double", "currency", "percent", "long"})


def _month(d: date, delta: int) -> date:
    """First day of the month `delta` months from d's month."""
    index = d.year * 12 + d.month - 1 + delta
    return date(index // 12, index % 12 + 1, 1)


def relative_range(name: str, n: int | None, today: date) -> tuple[date, date]:
    """The [start, end) UTC day range of a relative date literal, as Salesforce defines it (weeks start Sunday)."""
    day = timedelta(days=1)
    sunday = today - timedelta(days=today.isoweekday() % 7)
    fixed = {
        "TODAY": (today, today + day),
        "YESTERDAY": (today - day, today),
        "TOMORROW": (today + day, today + 2 * day),
        "LAST_WEEK": (sunday - 7 * day, sunday),
        "THIS_WEEK": (sunday, sunday + 7 * day),
        "NEXT_WEEK": (sunday + 7 * day, sunday + 14 * day),
        "LAST_MONTH": (_month(today, -1), _month(today, 0)),
        "THIS_MONTH": (_month(today, 0), _month(today, 1)),
        "NEXT_MONTH": (_month(today, 1), _month(today, 2)),
        "LAST_90_DAYS": (today - 90 * day, today + day),
        "NEXT_90_DAYS": (today + day, today + 91 * day),
        "THIS_YEAR": (date(today.year, 1, 1), date(today.year + 1, 1, 1)),
        "LAST_YEAR": (date(today.year - 1, 1, 1), date(today.year, 1, 1)),
        "NEXT_YEAR": (date(today.year + 1, 1, 1), date(today.year + 2, 1, 1)),
    }
    if name in fixed:
        return fixed[name]
    n = n or 0
    return {
        "LAST_N_DAYS": (today - n * day, today + day),
        "NEXT_N_DAYS": (today + day, today + (n + 1) * day),
        "N_DAYS_AGO": (today - n * day, today - (n - 1) * day),
    }[name]


def _default_column(name: str) -> sql.Composable:
    from psycopg import sql

    return sql.Identifier(name.lower())


def _utc_naive(value: datetime) -> datetime:
    """The mirror stores datetimes as `timestamp without time zone` in UTC."""
    return value.astimezone(UTC).replace(tzinfo=None)


def mirror_column(name: str) -> str:
    """A field's column in a Heroku Connect table: the lower-cased API name, and ``sfid`` for Id (Connect's own
    ``id`` column is its serial key, never the Salesforce Id)."""
    return "sfid" if name.lower() == "id" else name.lower()


def to_sql(
    expr: Expr,
    column: Callable[[str], sql.Composable] = _default_column,
    *,
    today: date,
    types: Mapping[str, str] | None = None,
    relation: Callable[[str], tuple[sql.Composable, Mapping[str, str]]] | None = None,
) -> tuple[sql.Composed, list]:
    """Render the filter for Postgres (the Connect mirror) with SOQL's semantics; every value is a ``%s`` param.

    :param column: SQL for a field's column (default: the lower-cased name, as Heroku Connect names them).
    :param today: the UTC day relative date literals count from; pass the run's logical date so a re-run
        replays the same decision.
    :param types: optional field name -> Salesforce type (from describe); ID fields then compare on their
        case-sensitive 15-character prefix, and datetime bounds of relative dates are timestamps.
    :param relation: for sub-selects: an object's mirror table and its field types.
    """
    from psycopg import sql

    params: list = []
    by_lower = {k.lower(): v for k, v in (types or {}).items()}
    joins = 0

    def subselect(col: sql.Composable, node: Comparison) -> sql.Composable:
        """[NOT] EXISTS over the other object's live mirror rows: SOQL's semi-/anti-join (a null on the left
        is in no set)."""
        nonlocal joins
        if relation is None:
            raise ValueError("a filter with a sub-select needs the mirror tables of the other objects")
        sub: SubSelect = node.value
        table, sub_types = relation(sub.sobject)
        joins += 1
        alias = f"j{joins}"
        inner = [sql.SQL("{} = {}").format(sql.Identifier(alias, mirror_column(sub.field)), col),
                 sql.SQL("NOT coalesce({}, false)").format(sql.Identifier(alias, "isdeleted"))]
        if sub.where is not None:
            where, inner_params = to_sql(sub.where, lambda n: sql.Identifier(alias, mirror_column(n)), today=today,
                                         types=sub_types)
            inner.append(sql.SQL("({})").format(where))
            params.extend(inner_params)  # the inner placeholders come after the outer ones rendered so far
        exists = sql.SQL("EXISTS (SELECT 1 FROM {} AS {} WHERE {})").format(
            table, sql.Identifier(alias), sql.SQL(" AND ").join(inner))
        # NOT EXISTS alone keeps a null on the left too (it equals nothing). Not `col IS NULL OR NOT EXISTS`:
        # under OR, Postgres cannot plan an anti join, and scans the other table once per row when its ids do not
        # fit work_mem (a million contacts against 250,000 cases).
        return exists if node.op == "IN" else sql.SQL("NOT {}").format(exists)

    def bind(value: Any) -> sql.Composable:
        params.append(value)
        return sql.Placeholder()

    def literal(lit: Value) -> Any:
        return _utc_naive(lit.value) if lit.kind == "datetime" else lit.value

    def compare(col: sql.Composable, ftype: str | None, op: str, lit: Value) -> sql.Composable:
        if lit.kind == "null" and ftype == "boolean":  # "= null is equivalent to = false" (Use null in WHERE)
            return sql.SQL("{} IS NOT TRUE" if op == "=" else "{} IS TRUE").format(col)
        if lit.kind == "null":
            return sql.SQL("{} IS NULL" if op == "=" else "{} IS NOT NULL").format(col)
        if lit.kind == "boolean":  # a Salesforce checkbox is never null; a null in the mirror reads as false
            positive = lit.value == (op == "=")
            return sql.SQL("{} IS TRUE" if positive else "{} IS NOT TRUE").format(col)
        if lit.kind == "relative":
            return relative(col, ftype, op, lit)
        if lit.kind == "string" and ftype in ID_TYPES:
            lhs, rhs = sql.SQL("left({}, 15)").format(col), sql.SQL("left({}, 15)").format(bind(lit.value))
        elif lit.kind == "string":  # SOQL compares text case-insensitively
            lhs, rhs = sql.SQL("lower({})").format(col), sql.SQL("lower({}::text)").format(bind(lit.value))
        else:
            lhs, rhs = col, bind(literal(lit))
        if op == "!=":  # SOQL's != also matches null
            return sql.SQL("{} IS DISTINCT FROM {}").format(lhs, rhs)
        return sql.SQL("{} {} {}").format(lhs, sql.SQL(op), rhs)

    def relative(col: sql.Composable, ftype: str | None, op: str, lit: Value) -> sql.Composable:
        """SOQL's range semantics: `=` inside [lo, hi), `<` before lo, `>` at or after hi."""
        lo, hi = relative_range(*lit.value, today)
        if ftype == "datetime":
            lo, hi = (datetime(d.year, d.month, d.day) for d in (lo, hi))
        if op == "=":
            return sql.SQL("({} >= {} AND {} < {})").format(col, bind(lo), col, bind(hi))
        if op == "!=":
            return sql.SQL("({} < {} OR {} >= {} OR {} IS NULL)").format(col, bind(lo), col, bind(hi), col)
        bound, sql_op = {"<": (lo, "<"), "<=": (hi, "<"), ">": (hi, ">="), ">=": (lo, ">=")}[op]
        return sql.SQL("{} {} {}").format(col, sql.SQL(sql_op), bind(bound))

    def render(node: Expr) -> sql.Composable:
        if isinstance(node, And | Or):
            joiner = sql.SQL(" AND " if isinstance(node, And) else " OR ")
            return sql.SQL("({})").format(joiner.join(render(item) for item in node.items))
        if isinstance(node, Not):
            # Two-valued like SOQL: a comparison with null is false, so its negation is true.
            return sql.SQL("(({}) IS NOT TRUE)").format(render(node.item))
        col, ftype = column(node.field), by_lower.get(node.field.lower())
        if isinstance(node.value, SubSelect):
            return subselect(col, node)
        if node.op == "LIKE":
            return sql.SQL("{} ILIKE {}").format(col, bind(node.value.like))  # backslash is ILIKE's escape too
        if node.op in ("IN", "NOT IN"):
            negate = node.op == "NOT IN"
            parts = [compare(col, ftype, "!=" if negate else "=", v) for v in node.value]
            return sql.SQL("({})").format(sql.SQL(" AND " if negate else " OR ").join(parts))
        return compare(col, ftype, node.op, node.value)

    return sql.Composed([render(expr)]), params


# ------------------------------------------------------------------------------------------ describe

_ALLOWED_KINDS = {
    "date": ("date", "relative"),
    "datetime": ("datetime", "relative"),
    "boolean": ("boolean",),
    **{t: ("number",) for t in NUMBER_TYPES},
}


def check_types(expr: Expr, describe: Mapping[str, Any],
                describe_of: Callable[[str], Mapping[str, Any] | None] | None = None) -> list[str]:
    """Problems Salesforce would refuse at query time: unknown fields, values of the wrong type, LIKE on non-text,
    sub-selects on fields that are not IDs. ``describe_of(name)`` describes a sub-select's object (None: the user
    cannot see it)."""
    by_lower = {f["name"].lower(): f for f in describe.get("fields", [])}
    sobject = describe.get("name", "the object")
    problems: list[str] = []
    for comp in comparisons(expr):
        info = by_lower.get(comp.field.lower())
        if info is None:
            problems.append(f"unknown field '{comp.field}' on {sobject}")
            continue
        ftype = info.get("type", "string")
        name = info["name"]
        if info.get("filterable") is False:
            problems.append(f"field '{name}' ({ftype}) cannot be used in a filter")
            continue
        if isinstance(comp.value, SubSelect):
            problems += _check_subselect(name, ftype, comp.value, describe_of)
            continue
        if comp.op == "LIKE":
            if ftype not in TEXT_TYPES:
                problems.append(f"LIKE needs a text field; '{name}' is {ftype}")
            continue
        allowed = _ALLOWED_KINDS.get(ftype, ("string",))
        values = comp.value if isinstance(comp.value, tuple) else (comp.value,)
        for lit in values:
            if lit.kind == "null" or lit.kind in allowed:
                continue
            if ftype == "datetime" and lit.kind == "date":
                problems.append(f"'{name}' is a datetime: write {lit.value.isoformat()}T00:00:00Z, not a date")
            elif ftype == "date" and lit.kind == "datetime":
                problems.append(f"'{name}' is a date: write {lit.value.date().isoformat()}, not a datetime")
            elif allowed == ("string",):
                problems.append(f"'{name}' is {ftype}: its value must be a quoted string, got {_soql_literal(lit)}")
            else:
                problems.append(
                    f"'{name}' is {ftype}: expected {' or '.join(allowed)} value, got {lit.kind} {_soql_literal(lit)}"
                )
    return problems


def _check_subselect(name: str, ftype: str, sub: SubSelect,
                     describe_of: Callable[[str], Mapping[str, Any] | None] | None) -> list[str]:
    if ftype not in ID_TYPES:
        return [f"'{name}' is {ftype}: a sub-select (IN (SELECT ...)) needs an ID or reference field on its left"]
    other = describe_of(sub.sobject) if describe_of is not None else None
    if other is None:
        return [f"sub-select: {sub.sobject} is not an object the API user can read"]
    info = {f["name"].lower(): f for f in other.get("fields", [])}.get(sub.field.lower())
    if info is None:
        return [f"sub-select: unknown field '{sub.field}' on {other.get('name', sub.sobject)}"]
    if info.get("type") not in ID_TYPES:
        return [f"sub-select: '{info['name']}' is {info.get('type')}; a sub-select selects an ID or reference field"]
    if sub.where is None:
        return []
    return [f"sub-select: {p}" for p in check_types(sub.where, other)]
