"""Requests built from the contract itself (GenerationRequest.DESCRIPTOR), so a field
added to the .proto is covered by every test that uses them without anyone editing
a list."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from gateway._gen.stablecog.v1 import generation_pb2

REQUEST_FIELDS = tuple(generation_pb2.GenerationRequest.DESCRIPTOR.fields)

# A value per scalar type, and a different one; floats are exact in float32.
_VALUES: dict[int, tuple[Any, Any]] = {
    FieldDescriptor.TYPE_STRING: ("https://example.com/a.png", "https://example.com/b.png"),
    FieldDescriptor.TYPE_INT32: (512, 768),
    FieldDescriptor.TYPE_INT64: (42, 43),
    FieldDescriptor.TYPE_FLOAT: (0.25, 0.75),
    FieldDescriptor.TYPE_DOUBLE: (0.25, 0.75),
    FieldDescriptor.TYPE_BOOL: (True, False),
}


def sample_value(field: FieldDescriptor, *, other: bool = False) -> Any:
    """A value for `field` (or a different one): every field of the contract has one, or
    this raises, so a field of a new type fails the tests until it is given one."""
    if field.type not in _VALUES or field.is_repeated:
        raise AssertionError(f"no sample value for {field.name} (type {field.type})")
    return _VALUES[field.type][1 if other else 0]


def every_field_set(**overrides: Any) -> generation_pb2.GenerationRequest:
    """A request with every field of the contract set to its sample value."""
    values = {field.name: sample_value(field) for field in REQUEST_FIELDS}
    values.update(overrides)
    return generation_pb2.GenerationRequest(**values)
