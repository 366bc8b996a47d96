"""The documented constraints, as declared in generation.proto, checked before any upstream call.

The rules live in the .proto (protovalidate), so every polyglot client can run the
same ones. This module runs them and turns every violation into one
`FieldViolation` named by the proto field. Message-level rules carry no field path;
their rule id starts with the field they are about (`inference_steps.pixel_steps`).

When the model catalog is known (a snapshot handed in by the caller: this module does no
I/O), a generation is also checked against it: an unknown or inactive `model_id`, the
pixel-steps product with the model's default width and height standing in for omitted
ones, and a `scheduler_id` the model is not compatible with (which the upstream would
silently replace: rejected here, so nobody pays for a different image than asked). Without
a catalog those checks are skipped, and each skip is reported as CatalogChecksSkipped.
"""

from __future__ import annotations

from collections.abc import Callable, Set

import protovalidate
from google.protobuf.message import Message

from gateway._gen.stablecog.v1 import generation_pb2
from gateway.errors import FieldViolation, InvalidRequest
from gateway.events import NULL_TELEMETRY, CatalogChecksSkipped, Telemetry
from gateway.upstream_defaults import DEFAULT_INFERENCE_STEPS, MAX_PIXEL_STEPS

Catalog = generation_pb2.ListModelsResponse

MAX_PROMPT_CHARS = 10_000
# Requests whose static rules passed, remembered by their exact bytes (cache hits repeat
# the same request; protovalidate was ~8% of a hit's samples). Bounded in entries and in
# the size of what is remembered, so it costs at most ~2 MiB.
VALID_MEMO_ENTRIES = 1024
VALID_MEMO_MAX_BYTES = 2048
_RULE_DESCRIPTIONS = {
    "required": "is required",
}


_NO_CATALOG = object()


class RequestValidator:
    """Checks a request of any of the contract's messages against its declared rules.
    Build once; reuse."""

    def __init__(
        self,
        *,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        catalog: Callable[[], Catalog | None] | None = None,
        telemetry: Telemetry = NULL_TELEMETRY,
    ) -> None:
        self._validator = protovalidate.Validator()
        self._valid: dict[tuple[str, bytes], None] = {}
        self._max_prompt_chars = max_prompt_chars
        self._catalog = catalog
        self._telemetry = telemetry

    def verdicts_hold(self) -> object | None:
        """What a generation's verdict "valid" depends on beyond its bytes: an object that
        stays the same while the verdict holds (the catalog snapshot it was checked
        against; a fixed token with no catalog configured), or None while the catalog is
        configured but unknown (each check then says its catalog checks were skipped)."""
        if self._catalog is None:
            return _NO_CATALOG
        return self._catalog()

    def violations(self, request: Message) -> list[FieldViolation]:
        """Every broken rule, one FieldViolation each; empty when the request is valid."""
        found = self._static_violations(request)
        if isinstance(request, generation_pb2.GenerationRequest) and self._catalog is not None:
            snapshot = self._catalog()
            if snapshot is None:
                self._telemetry.emit(CatalogChecksSkipped())
            else:
                found.extend(catalog_violations(request, snapshot, {v.field for v in found}))
        return found

    def _static_violations(self, request: Message) -> list[FieldViolation]:
        """The rules of the .proto and the prompt bound. Pure functions of the message, so
        a request whose exact serialization passed before passes again: the verdict
        "valid" is remembered (never an invalid one: those are rare and carry details).
        Two messages with the same bytes have the same field values, so nothing invalid
        can ever pass through the memo."""
        raw = request.SerializeToString(deterministic=True)
        memo = (request.DESCRIPTOR.full_name, raw) if len(raw) <= VALID_MEMO_MAX_BYTES else None
        if memo is not None and memo in self._valid:
            return []
        found = self._checked(request)
        if not found and memo is not None:
            if len(self._valid) >= VALID_MEMO_ENTRIES:
                self._valid.clear()
            self._valid[memo] = None
        return found

    def _checked(self, request: Message) -> list[FieldViolation]:
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


def default_model(catalog: Catalog) -> generation_pb2.Model | None:
    """The model a request naming none gets: the one flagged default, else the defaults
    route's model."""
    for model in catalog.models:
        if model.is_default:
            return model
    return find_model(catalog, catalog.defaults.model_id)


def find_model(catalog: Catalog, model_id: str) -> generation_pb2.Model | None:
    """The active model with this ID (UUIDs compared case-insensitively), else None."""
    wanted = model_id.lower()
    return next((m for m in catalog.models if m.id.lower() == wanted), None)


def catalog_violations(
    request: generation_pb2.GenerationRequest,
    catalog: Catalog,
    broken: Set[str] = frozenset(),
) -> list[FieldViolation]:
    """What the catalog says is wrong with a generation (docs/upstream-api.md#validation),
    leaving alone the checks on fields in `broken` (already reported by the static rules)."""
    if "model_id" in broken:
        return []
    if request.HasField("model_id"):
        model = find_model(catalog, request.model_id)
        if model is None:
            return [
                FieldViolation(
                    "model_id",
                    f"model_id {request.model_id} is not an active Stablecog model (ListModels "
                    "lists them)",
                )
            ]
    else:
        model = default_model(catalog)
    if model is None:
        return []
    found = []
    width = request.width if request.HasField("width") else model.default_width
    height = request.height if request.HasField("height") else model.default_height
    steps = (
        request.inference_steps if request.HasField("inference_steps") else DEFAULT_INFERENCE_STEPS
    )
    omitted = not (request.HasField("width") and request.HasField("height"))
    sized = not broken & {"width", "height", "inference_steps"}
    if sized and omitted and width > 0 and height > 0 and width * height * steps > MAX_PIXEL_STEPS:
        found.append(
            FieldViolation(
                "inference_steps",
                f"Width * height * inference_steps must be at most {MAX_PIXEL_STEPS}: "
                f"{width} * {height} * {steps} with the model's default size "
                f"({model.default_width}x{model.default_height}) for what is omitted",
            )
        )
    if request.HasField("scheduler_id") and "scheduler_id" not in broken:
        compatible = list(model.schedulers)
        if request.scheduler_id.lower() not in {s.id.lower() for s in compatible}:
            names = ", ".join(f"{s.name} ({s.id})" for s in compatible) or "none listed"
            found.append(
                FieldViolation(
                    "scheduler_id",
                    f"scheduler_id {request.scheduler_id} is not compatible with {model.name} "
                    f"(Stablecog would silently use the model's default instead); compatible: "
                    f"{names}",
                )
            )
    return found
