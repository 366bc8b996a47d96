"""The documented constraints, as declared in generation.proto, checked before any upstream call.

The rules live in the .proto (protovalidate), so every polyglot client can run the
same ones. This module runs them and turns every violation into one
`FieldViolation` named by the proto field. Message-level rules carry no field path;
their rule id starts with the field they are about (`inference_steps.pixel_steps`).
"""

from __future__ import annotations

import protovalidate
from google.protobuf.message import Message

from gateway.errors import FieldViolation, InvalidRequest

MAX_PROMPT_CHARS = 10_000
_RULE_DESCRIPTIONS = {
    "required": "is required",
}


class RequestValidator:
    """Checks a request of any of the contract's messages against its declared rules.
    Build once; reuse."""

    def __init__(self, *, max_prompt_chars: int = MAX_PROMPT_CHARS) -> None:
        self._validator = protovalidate.Validator()
        self._max_prompt_chars = max_prompt_chars

    def violations(self, request: Message) -> list[FieldViolation]:
        """Every broken rule, one FieldViolation each; empty when the request is valid."""
        found = []
        for violation in self._validator.collect_violations(request):
            proto = violation.proto
            elements = proto.field.elements if proto.field is not None else []
            message = _RULE_DESCRIPTIONS.get(proto.rule_id, proto.message)
            if elements:
                field = ".".join(e.field_name for e in elements)
                description = f"{field} {message}"
            else:  # a message-level rule: its message names the fields itself
                field = proto.rule_id.partition(".")[0]
                description = message[:1].upper() + message[1:]
            found.append(FieldViolation(field=field, description=description))
        # The gateway's own bound (configurable, so not in the .proto): the upstream reads
        # only the first 500 bytes of a prompt, so a megabyte of text is a mistake.
        for field in ("prompt", "negative_prompt"):
            if field not in request.DESCRIPTOR.fields_by_name:
                continue
            length = len(getattr(request, field))
            if length > self._max_prompt_chars:
                found.append(
                    FieldViolation(
                        field=field,
                        description=f"{field} has {length} characters; at most "
                        f"{self._max_prompt_chars} are accepted (--max-prompt-chars), and "
                        "Stablecog reads only the first 500 bytes",
                    )
                )
        return found

    def check(self, request: Message) -> None:
        """Raise InvalidRequest listing every violation, or return if the request is valid."""
        found = self.violations(request)
        if found:
            fields = sorted({v.field for v in found})
            raise InvalidRequest(
                f"invalid request: {len(found)} violation(s) on {', '.join(fields)}",
                violations=found,
            )
