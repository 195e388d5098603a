"""A SOQL subset: a hand-written parser and a compiler to Postgres SQL over the `org` schema.

The sandbox answers the REST query endpoint and Bulk API 2.0 query jobs from Postgres, so it needs
to understand the SOQL that clients send and fail the way Salesforce fails (same error codes, same
messages with the Row/Column caret) when a query is wrong or outside what the sandbox models.

Supported: ``SELECT f, Parent.f | COUNT() FROM Obj [WHERE ...] [ORDER BY ...] [LIMIT n] [OFFSET n]``
with comparisons, IN / NOT IN, LIKE, AND / OR / NOT, null, booleans, numbers, strings, date and
datetime literals and the calendar (not fiscal) date literals. Salesforce semantics kept on purpose:

* text comparisons and LIKE are case-insensitive; ID comparisons are case-sensitive on the first 15
  characters, so 15- and 18-character IDs both match the stored 18-character ID;
* ``!=``, ``NOT IN`` and ``NOT`` also match nulls (null is a value in SOQL), ``= null`` means IS NULL
  (on a checkbox, ``= false``);
* mixing AND and OR without parentheses is a syntax error;
* ORDER BY defaults to ASC NULLS FIRST, and DESC to NULLS LAST;
* deleted rows are hidden unless ``include_deleted`` (queryAll).

Semi-joins and anti-joins (``Id IN (SELECT AccountId FROM Contact WHERE ...)``, ``NOT IN``) filter on an ID
or reference field with a sub-select of one ID or reference field, as the SOQL and SOSL Reference's
"Comparison Operators" allows; at most two a query and none nested (the sandbox refuses those, the stricter
reading where its excerpts are silent on the exact wording).

Rejected as MALFORMED_QUERY: GROUP BY, HAVING, subqueries in the field list, TYPEOF, aggregates other than
COUNT(), ``SELECT *``, bind variables, aliases, FOR/WITH/USING SCOPE, relationship paths deeper than one level.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from psycopg import sql

from sandbox import ids
from sandbox.objects import Field, SObject, get_object

SCHEMA = "org"
TEXT_TYPES = {"string", "email", "phone", "url", "picklist", "textarea"}
ID_TYPES = {"id", "reference"}


class SoqlError(Exception):
    """A query Salesforce would refuse; `error_code` and `message` are what the API returns."""

    def __init__(self, error_code: str, message: str):
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.message = message


def _located(code: str, text: str, pos: int, message: str) -> SoqlError:
    """Salesforce quotes the offending line with a caret under the column (1-based)."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start : end if end != -1 else len(text)]
    row, col = text.count("\n", 0, pos) + 1, pos - start + 1
    return SoqlError(code, f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{message}")


# ---------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    kind: str  # word, string, number, date, datetime, op, punct, eof
    text: str  # as written, for error messages
    pos: int
    value: Any = None  # number/date/datetime: the parsed value; string: the source between the quotes

    def kw(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


# The whole lexical grammar as one pattern, scanned match after match: `bad` catches any character no other
# alternative takes and `unterminated` a quote that never closes, so nothing is skipped silently. (The
# product's policy filter parser lexes on its own; the sandbox is its oracle and shares none of its code.)
_LEXEME = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<unterminated>')
  | (?P<datetime>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d))
  | (?P<date>\d{4}-\d\d-\d\d)(?![\w:])
  | (?P<number>-?\d+(?:\.\d+)?)(?![\w.])
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>[!<>]=|<>|[=<>])
  | (?P<punct>[(),.:*])
  | (?P<bad>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokenize(text: str) -> list[Token]:
    tokens = []
    for m in _LEXEME.finditer(text):
        kind, pos, word = m.lastgroup, m.start(), m.group()
        if kind == "space":
            continue
        if kind == "unterminated":  # Salesforce reports the end of the query, where the closing quote is missing
            raise _located("MALFORMED_QUERY", text, len(text), "unexpected token: '<EOF>'")
        if kind == "bad":
            raise _located("MALFORMED_QUERY", text, pos, f"unexpected token: '{word}'")
        tokens.append(Token(kind, word, pos, _literal(kind, word, text, pos)))
    tokens.append(Token("eof", "<EOF>", len(text)))
    return tokens


def _literal(kind: str, word: str, text: str, pos: int) -> Any:
    """The value a literal token stands for; an impossible date (2024-02-30) is a malformed query."""
    try:
        if kind == "string":
            return word[1:-1]  # decoded by the parser, which knows whether it is a LIKE pattern
        if kind == "number":
            return int(word) if word.lstrip("-").isdigit() else Decimal(word)
        if kind == "date":
            return date.fromisoformat(word)
        if kind == "datetime":
            return datetime.fromisoformat(word)
    except ValueError:
        raise _located("MALFORMED_QUERY", text, pos, f"unexpected token: '{word}'") from None
    return None


# "Quoted String Escape Sequences", SOQL and SOSL Reference
# (https://developer.salesforce.com/docs/platform/salesforce-soql-sosl/guide/sforce-api-calls-soql-select-quotedstringescapes.html):
# \n \r \t \b \f in either case, \" \' \\ and \uXXXX anywhere; \% and \_ in a LIKE expression only; "if you use
# a backslash character in any other context, an error occurs". The table calls \b "Bell" in English and
# backspace in its Japanese translation; the sandbox reads it as backspace, as the Java-family escape it is.
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)", re.DOTALL)
_CONTROL = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


def _unquote(tok: Token, text: str, like: bool) -> tuple[str, str]:
    """(the text the literal means, the same as a Postgres LIKE pattern, whose escape is also a backslash)."""
    plain, pattern, last = [], [], 0
    for m in _ESCAPE.finditer(tok.value):
        raw = tok.value[last : m.start()]  # unescaped text: % and _ are wildcards in a pattern
        plain.append(raw)
        pattern.append(raw)
        last = m.end()
        seq = m.group(1)
        if seq[0] in "uU" and len(seq) == 5:
            char = chr(int(seq[1:], 16))
        elif seq.lower() in _CONTROL:
            char = _CONTROL[seq.lower()]
        elif seq in ("'", '"', "\\") or (like and seq in ("%", "_")):
            char = seq
        else:
            raise _located(
                "MALFORMED_QUERY", text, tok.pos,
                f"Invalid string literal '{text[tok.pos:]}'. Illegal character sequence '\\{seq}' in string literal.",
            )
        plain.append(char)
        pattern.append("\\" + char if char in "%_\\" else char)  # an escaped character matches only itself
    plain.append(tok.value[last:])
    pattern.append(tok.value[last:])
    return "".join(plain), "".join(pattern)


# ------------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class FieldRef:
    path: tuple[str, ...]  # ("LastName",) or ("Account", "Name"), as written
    pos: int


@dataclass(frozen=True)
class Value:
    kind: str  # string, number, boolean, null, date, datetime, relative
    value: Any  # relative: (NAME, n or None)
    pos: int
    like: str | None = None  # strings only: the Postgres LIKE pattern


@dataclass(frozen=True)
class Comparison:
    field: FieldRef
    op: str  # = != < <= > >= IN, NOT IN, LIKE
    value: Value | tuple[Value, ...]


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: Any


@dataclass(frozen=True)
class OrderItem:
    field: FieldRef
    descending: bool = False
    nulls_first: bool | None = None  # None: Salesforce's default for the direction


@dataclass(frozen=True)
class SubQuery:
    """The right side of a semi-join (IN) or anti-join (NOT IN): one ID or reference field of another object."""

    field: FieldRef
    sobject: str
    sobject_pos: int
    where: Any
    pos: int


MAX_SEMI_JOINS = 2


@dataclass(frozen=True)
class Query:
    sobject: str
    sobject_pos: int
    fields: tuple[FieldRef, ...]
    count_only: bool
    where: Comparison | And | Or | Not | None
    order_by: tuple[OrderItem, ...]
    limit: int | None
    offset: int | None
    text: str  # the source, for error carets found while compiling


# ---------------------------------------------------------------------------------------------- parser

_UNSUPPORTED = {
    "GROUP": "GROUP BY", "HAVING": "HAVING", "TYPEOF": "TYPEOF", "WITH": "WITH", "FOR": "FOR VIEW/UPDATE",
    "USING": "USING SCOPE", "INCLUDES": "INCLUDES", "EXCLUDES": "EXCLUDES", "SELECT": "subqueries",
}
_COMPARATORS = {"<>": "!="}  # the one operator with two spellings; the others stand for themselves


class _Parser:
    """A recursive-descent reader of a SELECT: each method consumes one construct and returns its AST node."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.in_subquery = False
        self.joins = 0

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def accept_kw(self, *words: str) -> Token | None:
        return self.advance() if self.peek().kw(*words) else None

    def expect_kw(self, word: str) -> Token:
        if not self.peek().kw(word):
            raise self.unexpected()
        return self.advance()

    def expect(self, text: str) -> Token:
        if self.peek().text != text or self.peek().kind not in ("punct", "op"):
            raise self.unexpected()
        return self.advance()

    def unexpected(self, tok: Token | None = None, feature: str | None = None) -> SoqlError:
        tok = tok or self.peek()
        feature = feature or (_UNSUPPORTED.get(tok.text.upper()) if tok.kind == "word" else None)
        note = f" ({feature} is not supported by the sandbox)" if feature else ""
        return _located("MALFORMED_QUERY", self.text, tok.pos, f"unexpected token: '{tok.text}'{note}")

    def query(self) -> Query:
        self.expect_kw("SELECT")
        fields, count_only = self.select_list()
        self.expect_kw("FROM")
        obj = self.advance()
        if obj.kind != "word":
            raise self.unexpected(obj)
        where = self.condition() if self.accept_kw("WHERE") else None
        order_by: list[OrderItem] = []
        if self.accept_kw("ORDER"):
            self.expect_kw("BY")
            order_by.append(self.order_item())
            while self.peek().text == ",":
                self.advance()
                order_by.append(self.order_item())
        limit = self.integer() if self.accept_kw("LIMIT") else None
        offset = self.integer() if self.accept_kw("OFFSET") else None
        if self.peek().kind != "eof":
            raise self.unexpected()
        return Query(obj.text, obj.pos, tuple(fields), count_only, where, tuple(order_by), limit, offset, self.text)

    def select_list(self) -> tuple[list[FieldRef], bool]:
        if self.peek().text == "*":
            raise self.unexpected(feature="SELECT *")
        if self.peek().kw("COUNT") and self.peek(1).text == "(":
            self.i += 2
            if self.peek().text != ")":
                raise self.unexpected(feature="COUNT(field)")
            self.advance()
            if not self.peek().kw("FROM"):
                raise self.unexpected()
            return [], True
        fields = [self.select_item()]
        while self.peek().text == ",":
            self.advance()
            fields.append(self.select_item())
        return fields, False

    def select_item(self) -> FieldRef:
        tok = self.peek()
        if tok.text == "(":
            raise self.unexpected(feature="subqueries")
        if tok.kw("TYPEOF"):
            raise self.unexpected()
        if tok.kind == "word" and self.peek(1).text == "(":
            raise self.unexpected(feature=f"{tok.text.upper()}()")
        if tok.kw("FROM"):
            raise self.unexpected()
        return self.field_ref()

    def field_ref(self) -> FieldRef:
        first = self.advance()
        if first.kind != "word":
            raise self.unexpected(first)
        path = [first.text]
        while self.peek().text == ".":
            self.advance()
            part = self.advance()
            if part.kind != "word":
                raise self.unexpected(part)
            path.append(part.text)
        return FieldRef(tuple(path), first.pos)

    def order_item(self) -> OrderItem:
        ref = self.field_ref()
        direction = self.accept_kw("ASC", "DESC")
        descending = direction is not None and direction.text.upper() == "DESC"
        nulls_first = None
        if self.accept_kw("NULLS"):
            nulls_first = self.peek().kw("FIRST")
            if not self.accept_kw("FIRST", "LAST"):
                raise self.unexpected()
        return OrderItem(ref, descending, nulls_first)

    def integer(self) -> int:
        tok = self.advance()
        if tok.kind != "number" or not isinstance(tok.value, int) or tok.value < 0:
            raise self.unexpected(tok)
        return tok.value

    def condition(self):
        """Operands under one connective: "Parentheses are required whenever you mix the operators" (Logical
        Operators, SOQL and SOSL Reference), so a second, different connective is a syntax error."""
        first = self.unary()
        if not self.peek().kw("AND", "OR"):
            return first
        connective = self.peek().text.upper()
        operands = [first]
        while self.accept_kw(connective):
            operands.append(self.unary())
        if self.peek().kw("AND", "OR"):
            raise self.unexpected()
        return (And if connective == "AND" else Or)(tuple(operands))

    def unary(self):
        if self.accept_kw("NOT"):
            return Not(self.unary())
        if self.peek().text == "(" and self.peek().kind == "punct":
            self.advance()
            if self.peek().kw("SELECT"):
                raise self.unexpected()
            inner = self.condition()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        ref = self.field_ref()
        tok = self.peek()
        if tok.kind == "op":
            self.advance()
            return Comparison(ref, _COMPARATORS.get(tok.text, tok.text), self.value())
        if tok.kw("IN"):
            self.advance()
            return Comparison(ref, "IN", self.subquery() or self.value_list())
        if tok.kw("NOT") and self.peek(1).kw("IN"):
            self.i += 2
            return Comparison(ref, "NOT IN", self.subquery() or self.value_list())
        if tok.kw("LIKE"):
            self.advance()
            value = self.value(like=True)
            if value.kind != "string":
                raise _located("MALFORMED_QUERY", self.text, value.pos, "invalid LIKE pattern: must be a quoted string")
            return Comparison(ref, "LIKE", value)
        raise self.unexpected(tok)

    def subquery(self) -> SubQuery | None:
        """``(SELECT field FROM Object [WHERE ...])`` after IN / NOT IN, or None when a value list follows."""
        if not (self.peek().text == "(" and self.peek(1).kw("SELECT")):
            return None
        start = self.advance()
        if self.in_subquery:
            raise _located("MALFORMED_QUERY", self.text, start.pos, "Nesting of semi join sub-selects is not supported")
        self.joins += 1
        if self.joins > MAX_SEMI_JOINS:
            raise _located("MALFORMED_QUERY", self.text, start.pos,
                           f"maximum {MAX_SEMI_JOINS} semi join sub-selects are allowed")
        self.expect_kw("SELECT")
        field = self.field_ref()
        if self.peek().text == ",":
            raise _located("MALFORMED_QUERY", self.text, self.peek().pos,
                           "semi join sub-selects can only select one field")
        self.expect_kw("FROM")
        obj = self.advance()
        if obj.kind != "word":
            raise self.unexpected(obj)
        self.in_subquery = True
        try:
            where = self.condition() if self.accept_kw("WHERE") else None
        finally:
            self.in_subquery = False
        self.expect(")")
        return SubQuery(field, obj.text, obj.pos, where, start.pos)

    def value_list(self) -> tuple[Value, ...]:
        self.expect("(")
        if self.peek().kw("SELECT"):
            raise self.unexpected()
        values = [self.value()]
        while self.peek().text == ",":
            self.advance()
            values.append(self.value())
        self.expect(")")
        return tuple(values)

    def value(self, like: bool = False) -> Value:
        """A literal; `like`: the right side of LIKE, the only place where \\% and \\_ are escapes."""
        tok = self.advance()
        if tok.kind == "string":
            plain, pattern = _unquote(tok, self.text, like)
            return Value("string", plain, tok.pos, pattern)
        if tok.kind in ("number", "date", "datetime"):
            return Value(tok.kind, tok.value, tok.pos)
        word = tok.text.upper() if tok.kind == "word" else ""
        if word in ("NULL", "TRUE", "FALSE"):
            return Value("null", None, tok.pos) if word == "NULL" else Value("boolean", word == "TRUE", tok.pos)
        if word in _DATE_LITERALS:
            return Value("relative", (word, None), tok.pos)
        if word in _DATE_LITERALS_N:
            self.expect(":")
            return Value("relative", (word, self.integer()), tok.pos)
        if "FISCAL" in word:
            raise self.unexpected(tok, feature="fiscal date literals")
        raise self.unexpected(tok)


def parse(text: str) -> Query:
    """Parse SOQL into a Query; raises SoqlError(MALFORMED_QUERY) on syntax outside the subset."""
    return _Parser(text).query()


# ------------------------------------------------------------------------------------ relative dates

# Written from the table of date literals in "Date Formats and Date Literals in WHERE", SOQL and SOSL Reference
# (https://developer.salesforce.com/docs/platform/salesforce-soql-sosl/guide/sforce-api-calls-soql-select-dateformats.html).
# Each literal is a run of whole calendar periods: (unit, first, count), `first` counting periods from the one
# that holds today (0), so the range is [start of period first, start of period first + count). The page's
# rows, read into that shape: LAST_N_DAYS:n and LAST_90_DAYS "include the current day" (LAST_N_DAYS:1 is
# yesterday and today); NEXT_N_DAYS:n and NEXT_90_DAYS start tomorrow; N_DAYS_AGO:n is the one day n days back;
# LAST_N_WEEKS/MONTHS/QUARTERS/YEARS:n are the n whole periods before the current one, NEXT_N_* the n after it,
# N_*_AGO:n the single period n back. Weeks start on the locale's first day: Sunday for the sandbox's en_US user.
_DATE_LITERALS = {
    "YESTERDAY": ("day", -1, 1), "TODAY": ("day", 0, 1), "TOMORROW": ("day", 1, 1),
    "LAST_90_DAYS": ("day", -90, 91), "NEXT_90_DAYS": ("day", 1, 90),
    **{f"{word}_{unit.upper()}": (unit, first, 1)
       for unit in ("week", "month", "quarter", "year")
       for word, first in (("LAST", -1), ("THIS", 0), ("NEXT", 1))},
}
_DATE_LITERALS_N: dict[str, Callable[[int], tuple[str, int, int]]] = {
    "LAST_N_DAYS": lambda n: ("day", -n, n + 1),
    "NEXT_N_DAYS": lambda n: ("day", 1, n),
    "N_DAYS_AGO": lambda n: ("day", -n, 1),
    **{name: rule
       for unit in ("week", "month", "quarter", "year")
       for name, rule in (
           (f"LAST_N_{unit.upper()}S", lambda n, u=unit: (u, -n, n)),
           (f"NEXT_N_{unit.upper()}S", lambda n, u=unit: (u, 1, n)),
           (f"N_{unit.upper()}S_AGO", lambda n, u=unit: (u, -n, 1)),
       )},
}
# The FISCAL_* literals depend on the org's fiscal year settings, which the sandbox does not model: refused.

# unit -> (the index of the period a day is in, the first day of the period with that index)
_PERIODS: dict[str, tuple[Callable[[date], int], Callable[[int], date]]] = {
    "day": (date.toordinal, date.fromordinal),
    # date.fromordinal(7) is Sunday 0001-01-07, so Sunday-started weeks are ordinal // 7.
    "week": (lambda d: d.toordinal() // 7, lambda k: date.fromordinal(7 * k)),
    "month": (lambda d: 12 * d.year + d.month - 1, lambda k: date(k // 12, k % 12 + 1, 1)),
    "quarter": (lambda d: 4 * d.year + (d.month - 1) // 3, lambda k: date(k // 4, 3 * (k % 4) + 1, 1)),
    "year": (lambda d: d.year, lambda k: date(k, 1, 1)),
}


def relative_range(name: str, n: int | None, today: date) -> tuple[date, date]:
    """The [start, end) days a date literal covers, counted from `today` (a UTC day in the sandbox)."""
    unit, first, count = _DATE_LITERALS[name] if n is None else _DATE_LITERALS_N[name](n)
    index_of, start_of = _PERIODS[unit]
    here = index_of(today)
    return start_of(here + first), start_of(here + first + count)


def id15(value: str) -> str:
    """The case-sensitive 15-character form of an ID; an 18-character suffix encodes the case."""
    if len(value) != 18:
        return value[:15]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    chars = list(value[:15])
    for chunk, flag in enumerate(value[15:].upper()):
        if flag not in alphabet:
            return value[:15]
        bits = alphabet.index(flag)
        for j in range(5):
            ch = chars[chunk * 5 + j]
            chars[chunk * 5 + j] = ch.upper() if bits >> j & 1 else ch.lower()
    return "".join(chars)


# -------------------------------------------------------------------------------------------- compiler


@dataclass
class Compiled:
    """A compiled query.

    `sql` has %s placeholders for `params` (run it with cursor.execute). COPY cannot take bind
    parameters, so `bound_sql` is the same query with every value rendered by psycopg.sql.Literal;
    `copy_sql()` wraps it in the COPY statement that produces Bulk API 2.0 CSV (use output="csv").
    """

    sobject: SObject
    columns: list[str]
    fields: list[Field]
    count_only: bool
    sql: sql.Composed
    params: list
    limit: int | None
    offset: int | None
    output: str
    bound_sql: sql.Composed

    def as_string_bound(self, conn=None) -> str:
        """The query with values inlined as SQL literals, escaped for `conn`."""
        return self.bound_sql.as_string(conn)

    def copy_sql(self) -> sql.Composed:
        return sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER false, FORCE_QUOTE *)").format(self.bound_sql)


def _type_name(field: Field) -> str:
    return {"datetime": "dateTime", "int": "integer", "currency": "double", "percent": "double", "reference": "id"}.get(
        field.type, "string" if field.type in TEXT_TYPES else field.type
    )


class _Compiler:
    """Turns a Query into SQL; `bind` makes a value's SQL (a placeholder, or a Literal for COPY)."""

    def __init__(self, query: Query, sobject: SObject, bind, include_deleted: bool, today: date, output: str,
                 resolve_object: Callable[[str], SObject | None] = get_object, alias: str = "t"):
        self.q, self.sobject, self.bind = query, sobject, bind
        self.include_deleted, self.today, self.output = include_deleted, today, output
        self.resolve_object, self.alias = resolve_object, alias
        self.joins: dict[str, tuple[str, SObject, Field]] = {}
        self.subqueries = 0

    def error(self, pos: int, message: str) -> SoqlError:
        return _located("INVALID_FIELD", self.q.text, pos, message)

    def resolve(self, ref: FieldRef) -> tuple[sql.Composable, Field, str]:
        """(column expression, Field, result column name) for a field path."""
        path = ref.path
        if len(path) == 2 and path[0].lower() == self.sobject.name.lower() and not self._relationship(path[0]):
            path = path[1:]  # `Contact.LastName` in a Contact query is just LastName
        if len(path) == 1:
            field = self.sobject.field(path[0]) or self._no_column(ref, path[0], self.sobject)
            return sql.Identifier(self.alias, field.column), field, field.name
        rel = self._relationship(path[0])
        if rel is None:
            raise self.error(
                ref.pos,
                f"Didn't understand relationship '{path[0]}' in field path. If you are attempting to use a custom "
                "relationship, be sure to append the '__r' after the custom relationship name. Please reference "
                "your WSDL or the describe call for the appropriate names.",
            )
        parent = self.resolve_object(rel.reference_to[0]) if len(rel.reference_to) == 1 else None
        if parent is None or len(path) > 2:
            raise self.error(
                ref.pos,
                f"Field path '{'.'.join(path)}' is not supported by the sandbox: only one level of relationship "
                "to a single-type reference is.",
            )
        field = parent.field(path[1]) or self._no_column(ref, path[1], parent)
        alias = ("r_" if self.alias == "t" else f"{self.alias}_r_") + rel.relationship_name.lower()
        self.joins.setdefault(alias, (alias, parent, rel))
        return sql.Identifier(alias, field.column), field, f"{rel.relationship_name}.{field.name}"

    def _relationship(self, name: str) -> Field | None:
        return next(
            (f for f in self.sobject.fields if f.relationship_name and f.relationship_name.lower() == name.lower()),
            None,
        )

    def _no_column(self, ref: FieldRef, name: str, sobject: SObject):
        raise self.error(
            ref.pos,
            f"No such column '{name}' on entity '{sobject.name}'. If you are attempting to use a custom field, be "
            "sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call "
            "for the appropriate names.",
        )

    # -- WHERE

    def condition(self, node) -> sql.Composable:
        if isinstance(node, (And, Or)):
            joiner = sql.SQL(" AND " if isinstance(node, And) else " OR ")
            return sql.SQL("({})").format(joiner.join(self.condition(item) for item in node.items))
        if isinstance(node, Not):
            # "NOT fieldExpressionX: true if fieldExpressionX is false" (Logical Operators), and a SOQL comparison
            # with a null field is false, never Postgres's unknown: NOT (Title = 'x') keeps the null titles.
            return sql.SQL("(NOT coalesce({}, false))").format(self.condition(node.item))
        return self.comparison(node)

    def comparison(self, node: Comparison) -> sql.Composable:
        expr, field, _ = self.resolve(node.field)
        if field.long_text:  # "any field except a long text area field" (Condition Expression Syntax)
            raise self.error(node.field.pos, f"field '{field.name}' can not be filtered in a query call")
        if isinstance(node.value, SubQuery):
            return self.semi_join(node, expr, field)
        values = node.value if isinstance(node.value, tuple) else (node.value,)
        for value in values:
            self.check(node.field, field, node.op, value)
        if node.op == "LIKE":
            return sql.SQL("{} ILIKE {}").format(expr, self.bind(node.value.like))  # backslash is the escape
        if node.op in ("IN", "NOT IN"):
            negate = node.op == "NOT IN"
            op = "!=" if negate else "="
            parts = [self.compare(expr, field, op, v) for v in values]
            return sql.SQL("({})").format(sql.SQL(" AND " if negate else " OR ").join(parts))
        return self.compare(expr, field, node.op, node.value)

    def semi_join(self, node: Comparison, expr: sql.Composable, field: Field) -> sql.Composable:
        """``expr [NOT] IN (SELECT ...)``: both sides ID or reference fields, the sub-select's own rows live."""
        sub = node.value
        if field.type not in ID_TYPES:
            raise self.error(node.field.pos, f"semi join sub-selects are only supported on Id or reference fields, "
                                             f"not on '{field.name}'")
        inner_obj = _object_or_invalid(self.resolve_object, sub.sobject, sub.sobject_pos, self.q.text)
        self.subqueries += 1
        inner = _Compiler(Query(inner_obj.name, sub.sobject_pos, (sub.field,), False, sub.where, (), None, None,
                                self.q.text), inner_obj, self.bind, False, self.today, "python",
                          self.resolve_object, alias=f"{self.alias}_s{self.subqueries}")
        col, inner_field, _ = inner.resolve(sub.field)
        if inner_field.type not in ID_TYPES:
            raise self.error(sub.field.pos, f"semi join sub-selects can only query id fields, cannot use: "
                                            f"'{inner_field.name}'")
        filters = [sql.SQL("{}.isdeleted = false").format(sql.Identifier(inner.alias)),
                   sql.SQL("{} IS NOT NULL").format(col)]
        if sub.where is not None:
            filters.append(inner.condition(sub.where))
        source = sql.SQL("FROM {} AS {}{}").format(sql.Identifier(SCHEMA, inner_obj.table),
                                                     sql.Identifier(inner.alias), inner.join_sql())
        if node.op == "IN":
            return sql.SQL("{} IN (SELECT {} {} WHERE {})").format(expr, col, source, sql.SQL(" AND ").join(filters))
        # A null on the left is in no set: an anti-join keeps it, as NOT EXISTS does. Not `NOT IN (SELECT ...)`:
        # Postgres can only hash that sub-select while it fits work_mem, and otherwise scans it once per row.
        return sql.SQL("NOT EXISTS (SELECT 1 {} WHERE {})").format(
            source, sql.SQL(" AND ").join([*filters, sql.SQL("{} = {}").format(col, expr)]))

    def join_sql(self) -> sql.Composable:
        joins = []
        for alias, parent, rel in self.joins.values():
            live = sql.SQL("") if self.include_deleted else sql.SQL(" AND {}.isdeleted = false").format(
                sql.Identifier(alias)
            )
            joins.append(
                sql.SQL(" LEFT JOIN {} AS {} ON {} = {}{}").format(
                    sql.Identifier(SCHEMA, parent.table), sql.Identifier(alias), sql.Identifier(alias, "id"),
                    sql.Identifier(self.alias, rel.column), live,
                )
            )
        return sql.SQL("").join(joins)

    def check(self, ref: FieldRef, field: Field, op: str, value: Value) -> None:
        """Salesforce types filter values: dates unquoted and of the right kind, strings quoted."""
        if op == "LIKE":
            if field.type not in TEXT_TYPES:
                raise self.error(ref.pos, f"invalid operator on {_type_name(field)} field '{field.name}': LIKE")
            return
        allowed = {
            "date": ("date", "relative"),
            "datetime": ("datetime", "relative"),
            "boolean": ("boolean",),
            "int": ("number",),
            "double": ("number",),
            "currency": ("number",),
            "percent": ("number",),
        }.get(field.type, ("string",))
        if value.kind != "null" and value.kind not in allowed:
            quoting = "be" if allowed == ("string",) else "not be"
            raise self.error(
                ref.pos,
                f"value of filter criterion for field '{field.name}' must be of type {_type_name(field)} and "
                f"should {quoting} enclosed in quotes",
            )

    def compare(self, expr: sql.Composable, field: Field, op: str, value: Value) -> sql.Composable:
        if value.kind == "null":
            if op not in ("=", "!="):
                return sql.SQL("FALSE")
            if field.type == "boolean":  # SOQL: a null checkbox is false
                return sql.SQL("{} IS NOT TRUE" if op == "=" else "{} IS TRUE").format(expr)
            return sql.SQL("{} IS NULL" if op == "=" else "{} IS NOT NULL").format(expr)
        if value.kind == "relative":
            return self.relative(expr, field, op, value)
        if field.type in TEXT_TYPES:
            lhs, rhs = sql.SQL("lower({})").format(expr), sql.SQL("lower({}::text)").format(self.bind(value.value))
        elif field.type in ID_TYPES:
            key = id15(str(value.value))
            if len(key) == 15 and all(ch in ids.BASE62 for ch in key):
                # Stored IDs are canonical 18-character ones: compare with that, so the column's index serves.
                lhs, rhs = expr, sql.SQL("{}::bpchar").format(self.bind(ids.to18(key)))
            else:
                lhs, rhs = sql.SQL("left({}, 15)").format(expr), self.bind(key)
        else:
            lhs, rhs = expr, self.bind(value.value)
        if op == "!=":  # a null field "doesn't equal the specified value" (Comparison Operators): it matches
            return sql.SQL("{} IS DISTINCT FROM {}").format(lhs, rhs)
        return sql.SQL("{} {} {}").format(lhs, sql.SQL(op), rhs)

    def relative(self, expr: sql.Composable, field: Field, op: str, value: Value) -> sql.Composable:
        start, end = relative_range(*value.value, self.today)
        if field.type == "datetime":
            start, end = (datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (start, end))
        template = {
            "=": "({e} >= {lo} AND {e} < {hi})",
            "!=": "({e} < {lo} OR {e} >= {hi} OR {e} IS NULL)",
            "<": "{e} < {lo}",
            "<=": "{e} < {hi}",
            ">": "{e} >= {hi}",
            ">=": "{e} >= {lo}",
        }[op]
        bounds = {name: self.bind(value) for name, value in (("lo", start), ("hi", end)) if f"{{{name}}}" in template}
        return sql.SQL(template).format(e=expr, **bounds)

    # -- SELECT and ORDER BY

    def render(self, expr: sql.Composable, field: Field) -> sql.Composable:
        """Bulk API 2.0 CSV text for a column: ISO UTC datetimes, true/false, 100.0 for decimals."""
        if self.output != "csv":
            return expr
        if field.type == "datetime":
            return sql.SQL("""to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')""").format(expr)
        if field.type == "date":
            return sql.SQL("to_char({}, 'YYYY-MM-DD')").format(expr)
        if field.type in ("double", "currency", "percent"):
            return sql.SQL(
                "CASE WHEN {e}::numeric = trunc({e}::numeric) THEN trunc({e}::numeric)::text || '.0' "
                "ELSE trim_scale({e}::numeric)::text END"
            ).format(e=expr)
        if field.type in TEXT_TYPES:
            return expr
        return sql.SQL("{}::text").format(expr)  # booleans render as true/false, char(18) IDs lose padding

    def select(self) -> tuple[sql.Composable, list[str], list[Field]]:
        items, columns, fields, seen = [], [], [], set()
        for ref in self.q.fields:
            expr, field, name = self.resolve(ref)
            if name.lower() in seen:
                raise _located("MALFORMED_QUERY", self.q.text, ref.pos, f"duplicate field selected: {name}")
            seen.add(name.lower())
            items.append(sql.SQL("{} AS {}").format(self.render(expr, field), sql.Identifier(name)))
            columns.append(name)
            fields.append(field)
        return sql.SQL(", ").join(items), columns, fields

    def order(self) -> sql.Composable:
        items = []
        for item in self.q.order_by:
            expr, field, _ = self.resolve(item.field)
            if field.type == "textarea":
                raise self.error(item.field.pos, f"field '{field.name}' can not be sorted in a query call")
            if field.type in TEXT_TYPES:
                expr = sql.SQL("lower({})").format(expr)
            nulls_first = (not item.descending) if item.nulls_first is None else item.nulls_first
            items.append(
                sql.SQL("{} {} NULLS {}").format(
                    expr, sql.SQL("DESC" if item.descending else "ASC"), sql.SQL("FIRST" if nulls_first else "LAST")
                )
            )
        return sql.SQL(" ORDER BY ") + sql.SQL(", ").join(items) if items else sql.SQL("")

    def compile(self) -> tuple[sql.Composed, list[str], list[Field]]:
        select, columns, fields = self.select() if not self.q.count_only else (sql.SQL("count(*)"), [], [])
        filters = [] if self.include_deleted else [sql.SQL("t.isdeleted = false")]
        if self.q.where is not None:
            filters.append(self.condition(self.q.where))
        order = self.order() if not self.q.count_only else sql.SQL("")
        page = sql.SQL("")
        if self.q.limit is not None:
            page += sql.SQL(" LIMIT {}").format(self.bind(self.q.limit))
        if self.q.offset is not None:
            page += sql.SQL(" OFFSET {}").format(self.bind(self.q.offset))
        body = sql.SQL("FROM {} AS t{}{}{}").format(
            sql.Identifier(SCHEMA, self.sobject.table),
            self.join_sql(),
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(filters) if filters else sql.SQL(""),
            order,
        )
        paged = self.q.limit is not None or self.q.offset is not None
        if self.q.count_only and paged:  # COUNT() counts what LIMIT/OFFSET would return
            query = sql.SQL("SELECT count(*) FROM (SELECT 1 {}{}) AS page").format(body, page)
        else:
            query = sql.SQL("SELECT {} {}{}").format(select, body, page)
        return query, columns, fields


def _object_or_invalid(resolve_object, name: str, pos: int, text: str) -> SObject:
    """The sObject, or INVALID_TYPE as Salesforce answers a type the user cannot see (or that does not exist)."""
    sobject = resolve_object(name)
    if sobject is None:
        raise _located(
            "INVALID_TYPE", text, pos,
            f"sObject type '{name}' is not supported. If you are attempting to use a custom object, be "
            "sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for "
            "the appropriate names.",
        )
    return sobject


def compile_query(
    text_or_query: str | Query,
    *,
    include_deleted: bool = False,
    now: datetime | None = None,
    output: str = "python",
    resolve_object: Callable[[str], SObject | None] = get_object,
) -> Compiled:
    """Compile SOQL to Postgres SQL over schema `org`.

    output="python" selects raw columns; output="csv" renders each as Bulk API 2.0 CSV text, for
    ``COPY (...) TO STDOUT WITH (FORMAT csv, HEADER false, FORCE_QUOTE *)`` via `Compiled.copy_sql()`.
    Relative date literals are resolved against `now` (default: the current time) on UTC days.
    `resolve_object` finds an sObject by name as this user and API version see the org (None: not there).
    """
    if output not in ("python", "csv"):
        raise ValueError(f"output must be 'python' or 'csv', not {output!r}")
    query = parse(text_or_query) if isinstance(text_or_query, str) else text_or_query
    sobject = _object_or_invalid(resolve_object, query.sobject, query.sobject_pos, query.text)
    now = now or datetime.now(UTC)
    today = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC).date()
    params: list = []

    def placeholder(value):
        params.append(value)
        return sql.Placeholder()

    statement, columns, fields = _Compiler(query, sobject, placeholder, include_deleted, today, output,
                                           resolve_object).compile()
    bound, _, _ = _Compiler(query, sobject, sql.Literal, include_deleted, today, output, resolve_object).compile()
    return Compiled(
        sobject, columns, fields, query.count_only, statement, params, query.limit, query.offset, output, bound
    )
