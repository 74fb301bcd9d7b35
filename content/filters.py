"""containerd's filter syntax (github.com/containerd/containerd/filters), parsed and matched.

Grammar (as containerd's parser.go)::

    filters   := filter*                      several filter strings are OR-ed
    filter    := selector ("," selector)*     selectors are AND-ed; "" matches everything
    selector  := fieldpath (operator value)?  no operator: the field must be present
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z0-9_-]+
    operator  := "==" | "!=" | "~=" | "@="    equal, not equal, regexp search, contains
    value     := quoted | [^\\s,]+
    quoted    := a Go string literal delimited by '"', '/' or '|'

Matching follows containerd's ``selector.Match``: ``==`` needs the field present; ``!=``,
``~=`` and ``@=`` compare against "" when it is absent. Regexps use Python's ``re``
(``re.search``, unanchored like Go's ``MatchString``); the two syntaxes agree on the common
subset.

Must not know what objects it filters: fields are looked up through the caller's adaptor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from content.errors import InvalidArgument

Lookup = Callable[[Sequence[str]], str | None]

_QUOTES = frozenset('"/|')
_OPERATOR_CHARS = frozenset("=!~@")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}


class Operator(Enum):
    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="
    CONTAINS = "@="


@dataclass(frozen=True, slots=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: Operator = Operator.PRESENT
    value: str = ""
    regexp: re.Pattern[str] | None = None

    def match(self, lookup: Lookup) -> bool:
        found = lookup(self.fieldpath)
        if self.operator is Operator.PRESENT:
            return found is not None
        if self.operator is Operator.EQUAL:
            return found is not None and found == self.value
        value = found if found is not None else ""
        if self.operator is Operator.NOT_EQUAL:
            return value != self.value
        if self.operator is Operator.CONTAINS:
            return self.value in value
        assert self.regexp is not None
        return self.regexp.search(value) is not None


@dataclass(frozen=True, slots=True)
class Filter:
    """OR of conjunctions; no conjunctions at all (``parse_filters([])``) matches everything."""

    alternatives: tuple[tuple[Selector, ...], ...] = ()

    def match(self, lookup: Lookup) -> bool:
        if not self.alternatives:
            return True
        return any(all(s.match(lookup) for s in conj) for conj in self.alternatives)


def parse_filters(filters: Sequence[str]) -> Filter:
    """Parse containerd filter strings (OR-ed). Raises InvalidArgument on bad syntax."""
    if isinstance(filters, str):
        # A bare string is a sequence of characters: a caller bug worth naming.
        raise InvalidArgument(f"filters {filters!r}: expected a sequence of filter strings")
    alternatives: list[tuple[Selector, ...]] = []
    for text in filters:
        if text == "":
            # containerd's Parse("") is Always, so the whole OR matches everything.
            return Filter()
        alternatives.append(_Parser(text).parse())
    return Filter(tuple(alternatives))


class _Parser:
    """A recursive-descent parser over one filter string, tracking a character position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, pos: int, msg: str) -> InvalidArgument:
        shown = self.text[:pos] + " >|" + self.text[pos : pos + 1] + "|< " + self.text[pos + 1 :]
        return InvalidArgument(f"filter {self.text!r}: parse error at {pos} [{shown}]: {msg}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def parse(self) -> tuple[Selector, ...]:
        selectors = [self.selector()]
        while True:
            self.skip_space()
            ch = self.peek()
            if ch == "":
                return tuple(selectors)
            if ch != ",":
                raise self.error(self.pos, f"unexpected input: {ch!r}")
            self.pos += 1
            selectors.append(self.selector())

    def selector(self) -> Selector:
        fieldpath = self.fieldpath()
        self.skip_space()
        if self.peek() in ("", ","):
            return Selector(fieldpath)
        op = self.operator()
        value = self.value()
        regexp = None
        if op is Operator.MATCHES:
            try:
                regexp = re.compile(value)
            except re.error as e:
                raise self.error(self.pos, f"bad regexp {value!r}: {e}") from e
        return Selector(fieldpath, op, value, regexp)

    def fieldpath(self) -> tuple[str, ...]:
        fields = [self.field()]
        while True:
            self.skip_space()
            if self.peek() != ".":
                return tuple(fields)
            self.pos += 1
            fields.append(self.field())

    def field(self) -> str:
        self.skip_space()
        start = self.pos
        ch = self.peek()
        if ch in _QUOTES and ch:
            return self.quoted()
        while self.pos < len(self.text) and _is_field_char(self.text[self.pos]):
            self.pos += 1
        if self.pos == start:
            raise self.error(start, "expected field or quoted")
        return self.text[start : self.pos]

    def operator(self) -> Operator:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _OPERATOR_CHARS:
            self.pos += 1
        token = self.text[start : self.pos]
        if not token:
            raise self.error(start, 'expected an operator ("=="|"!="|"~="|"@=")')
        for op in Operator:
            if op is not Operator.PRESENT and op.value == token:
                return op
        raise self.error(start, f"unsupported operator {token!r}")

    def value(self) -> str:
        self.skip_space()
        start = self.pos
        ch = self.peek()
        if ch == "":
            raise self.error(start, "expected value or quoted, got end of input")
        if ch in _QUOTES:
            return self.quoted()
        if ch in ",.":
            raise self.error(start, "expected value or quoted")
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "," or c.isspace():
                break
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A Go-style string literal delimited by '"', '/' or '|' (containerd's quote.go)."""
        start = self.pos
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.error(start, "quoted literal not terminated")
            c = self.text[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(out)
            if c != "\\":
                out.append(c)
                self.pos += 1
                continue
            out.append(self.escape(quote))

    def escape(self, quote: str) -> str:
        start = self.pos
        self.pos += 1  # the backslash
        c = self.peek()
        self.pos += 1
        if c in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[c]
        if c == quote:
            return c
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.text[self.pos : self.pos + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(start, "illegal numeric escape sequence")
            self.pos += width
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise self.error(start, "escape sequence is not a valid code point")
            return chr(code)
        if c and c in "01234567":
            digits = self.text[self.pos - 1 : self.pos + 2]
            if len(digits) != 3 or any(d not in "01234567" for d in digits):
                raise self.error(start, "illegal octal escape sequence")
            self.pos += 2
            code = int(digits, 8)
            if code > 255:
                raise self.error(start, "octal escape sequence out of range")
            return chr(code)
        raise self.error(start, f"illegal escape sequence \\{c}")


def _is_field_char(c: str) -> bool:
    return c == "_" or c == "-" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")
