"""Compact JSON exactly as ``serde_json`` writes it, so a job built here is byte-identical to
the one ``pushfleet submit`` would publish (``schemas/vectors/django.json`` checks it).

The differences from :func:`json.dumps` are the float format (serde_json uses ryu: ``1.5e-7``,
``0.00001``, ``1000000000000000.0``, where Python writes ``1.5e-07``, ``1e-05``) and that object
keys are written in sorted order, as serde_json's default (sorted) maps hold them. Non-finite
floats and lone surrogates are refused: they have no JSON or UTF-8 form.
"""

import math
from collections.abc import Mapping, Sequence

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _string(text: str) -> str:
    out = ['"']
    for c in text:
        escaped = _ESCAPES.get(c)
        if escaped is not None:
            out.append(escaped)
        elif c < " ":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def format_float(x: float) -> str:
    """A finite float as serde_json (ryu) writes it."""
    if not math.isfinite(x):
        raise ValueError(f"{x!r} has no JSON form")
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest digits that round-trip, as ryu does; only the layout differs.
    mantissa, _, exponent = repr(abs(x)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    all_digits = int_part + frac_part
    stripped = all_digits.lstrip("0")
    point = len(int_part) + (int(exponent) if exponent else 0) - (len(all_digits) - len(stripped))
    digits = stripped.rstrip("0")
    length = len(digits)
    kk = point  # 10^(kk-1) <= |x| < 10^kk
    k = kk - length
    if k >= 0 and kk <= 16:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        text = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        text = "0." + "0" * (-kk) + digits
    elif length == 1:
        text = f"{digits}e{kk - 1:+d}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1:+d}"
    return sign + text


class Fields(tuple[tuple[str, object], ...]):
    """An object whose keys keep the given order (a Rust struct's field order), where a
    mapping's keys would be sorted."""


def encode(value: object) -> str:
    """``value`` (dicts, lists, strings, numbers, booleans, None, :class:`Fields`) as compact
    JSON text."""
    if isinstance(value, Fields):
        return "{" + ",".join(f"{_string(k)}:{encode(v)}" for k, v in value) + "}"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, Mapping):
        items = []
        for key in sorted(value):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys are strings, not {type(key).__name__}")
            items.append(f"{_string(key)}:{encode(value[key])}")
        return "{" + ",".join(items) + "}"
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return "[" + ",".join(encode(item) for item in value) + "]"
    raise TypeError(f"{type(value).__name__} has no JSON form")
