"""Rust's text semantics, where the ported checks depend on them.

The job rules of ``shared/src`` are written in Rust and judge characters with Rust's
definitions (``char::is_whitespace`` is Unicode's White_Space, not :meth:`str.isspace`; ``trim``
removes White_Space only) and quote them with Rust's ``Debug`` and ``escape_default`` forms.
Error messages must be the same in both languages, so these are reproduced here rather than
approximated with Python's built-ins.

Unicode tables differ between Python and Rust releases; characters assigned in a Unicode
version one of them does not know yet may be quoted differently in a message. Whether a value
is accepted never depends on that: every acceptance rule is ASCII.
"""

import unicodedata

# Unicode White_Space, as Rust's `char::is_whitespace`.
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

# Other_Grapheme_Extend (Unicode 15), which Rust's Debug escapes besides Mn and Me.
_OTHER_GRAPHEME_EXTEND = frozenset(
    [
        *(0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E),
        *(0x0D57, 0x0DCF, 0x0DDF, 0x1B35, 0x200C, 0x302E, 0x302F, 0xFF9E, 0xFF9F, 0x1133E),
        *(0x11357, 0x114B0, 0x114BD, 0x115AF, 0x11930, 0x1D165, 0x1D16E, 0x1D16F, 0x1D170),
        *(0x1D171, 0x1D172),
        *range(0xE0020, 0xE0080),
    ]
)

_ASCII_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ASCII_HEX = frozenset("0123456789abcdefABCDEF")
_ASCII_DIGITS = frozenset("0123456789")


def is_whitespace(c: str) -> bool:
    """Rust's ``char::is_whitespace``."""
    return c in _WHITE_SPACE


def is_control(c: str) -> bool:
    """Rust's ``char::is_control`` (general category Cc)."""
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F


def is_ascii_alnum(c: str) -> bool:
    return c in _ASCII_ALNUM


def is_ascii_hexdigit(c: str) -> bool:
    return c in _ASCII_HEX


def is_ascii_digit(c: str) -> bool:
    return c in _ASCII_DIGITS


def is_ascii_upper(c: str) -> bool:
    return "A" <= c <= "Z"


def is_ascii_lower(c: str) -> bool:
    return "a" <= c <= "z"


def trim(text: str) -> str:
    """Rust's ``str::trim``: White_Space removed from both ends."""
    return trim_end(trim_start(text))


def trim_start(text: str) -> str:
    """Rust's ``str::trim_start``."""
    i = 0
    while i < len(text) and text[i] in _WHITE_SPACE:
        i += 1
    return text[i:]


def trim_end(text: str) -> str:
    """Rust's ``str::trim_end``."""
    i = len(text)
    while i > 0 and text[i - 1] in _WHITE_SPACE:
        i -= 1
    return text[:i]


def eq_ignore_ascii_case(a: str, b: str) -> bool:
    """Rust's ``str::eq_ignore_ascii_case`` (only ASCII letters are folded)."""
    if len(a) != len(b):
        return False
    return all(
        x == y or (x.isascii() and y.isascii() and x.lower() == y.lower())
        for x, y in zip(a, b, strict=True)
    )


def _is_grapheme_extended(c: str) -> bool:
    return unicodedata.category(c) in ("Mn", "Me") or ord(c) in _OTHER_GRAPHEME_EXTEND


def _unicode_escape(c: str) -> str:
    return f"\\u{{{ord(c):x}}}"


def _escape_debug(c: str, *, in_str: bool) -> str:
    if c == "\0":
        return "\\0"
    if c == "\t":
        return "\\t"
    if c == "\r":
        return "\\r"
    if c == "\n":
        return "\\n"
    if c == "\\":
        return "\\\\"
    if c == '"' and in_str:
        return '\\"'
    if c == "'" and not in_str:
        return "\\'"
    if _is_grapheme_extended(c):
        return _unicode_escape(c)
    if c == " " or c.isprintable():
        return c
    return _unicode_escape(c)


def debug_str(text: str) -> str:
    """Rust's ``{:?}`` of a string: ``"my\\u{7}app"``."""
    return '"' + "".join(_escape_debug(c, in_str=True) for c in text) + '"'


def debug_char(c: str) -> str:
    """Rust's ``{:?}`` of a char: ``'\\n'``."""
    return "'" + _escape_debug(c, in_str=False) + "'"


def escape_default(c: str) -> str:
    """Rust's ``char::escape_default``."""
    escapes = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "'": "\\'", '"': '\\"', "\\": "\\\\"}
    if c in escapes:
        return escapes[c]
    if " " <= c <= "~":
        return c
    return _unicode_escape(c)
