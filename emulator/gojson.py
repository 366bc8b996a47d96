"""JSON encoding byte-compatible with Go's encoding/json as used by chi's `render.JSON`.

The real server's bodies are compact, HTML-escaped (`<` becomes `\\u003c`), end with a newline,
and print float32 fields with float32's shortest form (7.1, not 7.099999904632568). Python's
json module does none of these, so responses are encoded here. Pure code.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from uuid import UUID


class Float32(float):
    """A value of a Go float32 field; encoded with float32's shortest decimal form."""


def to_float32(value: float) -> float:
    """Round to the nearest float32 (raises OverflowError if out of float32 range)."""
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _shortest_digits(value: float, bits: int) -> tuple[str, int]:
    """Shortest digits d1d2... and exponent e with value == d1.d2... x 10**e, round-tripping."""
    for precision in range(1, 18):
        text = f"{value:.{precision - 1}e}"
        parsed = float(text)
        if (to_float32(parsed) if bits == 32 else parsed) == value:
            break
    mantissa, _, exponent = text.partition("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    return digits, int(exponent)


def format_float(value: float, bits: int = 64) -> str:
    """Go's `floatEncoder`: 'f' form between 1e-6 and 1e21, else 'e' form with e-7 not e-07."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"unsupported value: {value!r}")
    if bits == 32:
        value = to_float32(value)
    sign = "-" if str(value).startswith("-") else ""
    magnitude = abs(value)
    if magnitude == 0:
        return sign + "0"
    digits, exponent = _shortest_digits(magnitude, bits)
    if magnitude < 1e-6 or magnitude >= 1e21:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        exp_sign = "-" if exponent < 0 else "+"
        exp_digits = str(abs(exponent))
        if exp_sign == "+" or len(exp_digits) > 1:
            exp_digits = exp_digits.rjust(2, "0")
        return f"{sign}{mantissa}e{exp_sign}{exp_digits}"
    if exponent >= 0:
        integer = digits[: exponent + 1].ljust(exponent + 1, "0")
        fraction = digits[exponent + 1 :]
    else:
        integer = "0"
        fraction = "0" * (-exponent - 1) + digits
    return sign + integer + ("." + fraction if fraction else "")


_SURROGATE = re.compile("[\ud800-\udfff]")
_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_HTML_PATTERN = re.compile("[<>&\u2028\u2029]")


def _encode_string(text: str) -> str:
    # Go writes invalid UTF-8 as U+FFFD; in Python that is a lone surrogate.
    cleaned = _SURROGATE.sub("\ufffd", text)
    encoded = json.dumps(cleaned, ensure_ascii=False)
    return _HTML_PATTERN.sub(lambda m: _HTML_ESCAPES[m.group()], encoded)


def _encode(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, Float32):
        out.append(format_float(float(value), 32))
    elif isinstance(value, float):
        out.append(format_float(value, 64))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, UUID):
        out.append(f'"{value}"')
    elif isinstance(value, Mapping):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_encode_string(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, Sequence):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: object) -> bytes:
    """Encode like `render.JSON` (a json.Encoder with HTML escaping): compact, newline-ended."""
    out: list[str] = []
    _encode(value, out)
    out.append("\n")
    return "".join(out).encode("utf-8")
