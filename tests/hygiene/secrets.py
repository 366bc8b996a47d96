"""The secret-hygiene sweep's matcher: every form in which a known secret could leak into a
text the gateway emitted, and a search of texts for any of them. Pure.

A secret leaks if any of these appears:

- the secret as is, in any letter case (compared case-folded);
- its UTF-8 bytes in hex (any case), URL-encoded (`quote` and `quote_plus`, any case);
- its bytes in base64, standard or URL-safe alphabet, at each of the three alignments it
  can have inside a longer encoded text (a key inside an encoded protobuf or JSON value),
  with only the characters that depend on the secret's bytes alone;
- a prefix of it longer than `PREFIX` characters (`sc-` and 5 more, for a Stablecog key),
  in any case: what `gateway.logs.redact` keeps of a key is exactly `sc-` (the redacted
  form is `sc-[REDACTED]`), so no longer prefix has any business anywhere;
- any `WINDOW` consecutive characters of it (a suffix or middle part a helper kept, as in
  `…1f3c9a41b2e0`), in any case.

Separately, `key_like` finds anything shaped like a Stablecog key (`sc-` and 4 or more
key characters): after `redact` there is none, so every text must have none.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

PREFIX = 8  # no prefix longer than this (`sc-` + 5) may appear
WINDOW = 12  # nor any run of this many characters of a secret
_KEY_LIKE = re.compile(r"\bsc-[A-Za-z0-9_-]{4,}")


@dataclass(frozen=True)
class Secret:
    """A known secret of the sweep: a name for the report and its value."""

    name: str
    value: str


def _b64_cores(raw: bytes) -> list[tuple[str, str]]:
    """(form, text) for the base64 characters that encode `raw` alone, at each alignment."""
    found = []
    for offset in range(3):
        start = -(-8 * offset // 6)  # the first character holding no padding byte's bit
        end = 8 * (offset + len(raw)) // 6  # past the last one holding only `raw`'s bits
        padded = b"\0" * offset + raw
        for form, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            found.append((f"{form}@{offset}", encode(padded).decode()[start:end]))
    return found


def forms(secret: str) -> list[tuple[str, str, bool]]:
    """(form name, needle, case-sensitive) for every way `secret` can be spotted."""
    raw = secret.encode()
    needles: list[tuple[str, str, bool]] = [
        ("as is", secret, False),
        ("hex", raw.hex(), False),
        ("url-encoded", quote(secret, safe=""), False),
        ("url-encoded (plus)", quote_plus(secret, safe=""), False),
        (f"prefix of {PREFIX + 1}", secret[: PREFIX + 1], False),
    ]
    needles += [(form, text, True) for form, text in _b64_cores(raw)]
    needles += [
        (f"characters {i}..{i + WINDOW}", secret[i : i + WINDOW], False)
        for i in range(1, max(len(secret) - WINDOW + 1, 1))
    ]
    return needles


@dataclass(frozen=True)
class Leak:
    secret: str
    form: str
    where: str
    excerpt: str


class Matcher:
    """Searches texts for every form of every secret (the needles are built once)."""

    def __init__(self, secrets: Iterable[Secret]) -> None:
        self.secrets = list(secrets)
        for secret in self.secrets:
            if len(secret.value) < 2 * PREFIX:
                raise ValueError(f"{secret.name}: too short to be told from chance")
        self._needles = [
            (secret.name, form, needle if sensitive else needle.lower(), sensitive)
            for secret in self.secrets
            for form, needle, sensitive in forms(secret.value)
        ]

    def leaks(self, where: str, text: str) -> list[Leak]:
        folded = text.lower()
        found = []
        for name, form, needle, sensitive in self._needles:
            at = (text if sensitive else folded).find(needle)
            if at >= 0:
                excerpt = text[max(at - 60, 0) : at + len(needle) + 60]
                found.append(Leak(name, form, where, excerpt))
        found += [
            Leak("a Stablecog key shape", "sc- and key characters", where, m.group(0))
            for m in _KEY_LIKE.finditer(text)
        ]
        return found
