"""The REST door's JSON: request bodies into protobuf messages, messages into JSON answers.

Requests follow the proto3 JSON mapping exactly as Envoy's transcoder would read them
(snake_case or lowerCamel names, unknown fields ignored, "3" accepted for an integer, null as
unset), plus one leniency the contract asks for: a single string where a list of strings is
expected. A bad field is an InvalidArgument naming it.

Answers are the proto3 JSON mapping with three choices the contract fixes: 64-bit integers
are JSON numbers (strings where a door asks, as the mapping itself has them), field names
stay snake_case, and fields without presence are left out when they are empty strings or
bytes. Numbers, booleans, lists and maps are always printed, unless the caller names them as
unset when 0 or empty (`unset_when_empty`: a limit whose 0 means "no limit"). Timestamps
are RFC 3339 strings; a map is an object whose keys are strings.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import orjson
from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from service.errors import InvalidArgument

M = TypeVar("M", bound=Message)
JSON = "application/json"
_INT64 = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
                    FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED64,
                    FieldDescriptor.TYPE_SFIXED64})

_KINDS = {
    FieldDescriptor.TYPE_STRING: "a string",
    FieldDescriptor.TYPE_BYTES: "a base64 string",
    FieldDescriptor.TYPE_BOOL: "a boolean",
    FieldDescriptor.TYPE_ENUM: "one of the allowed names",
    FieldDescriptor.TYPE_MESSAGE: "an object",
    FieldDescriptor.TYPE_DOUBLE: "a number",
    FieldDescriptor.TYPE_FLOAT: "a number",
}


def decode(body: bytes, message_type: type[M]) -> M:
    """Parse a JSON body into `message_type`, or raise InvalidArgument naming the field."""
    return from_object(load_object(body), message_type)


def load_object(body: bytes) -> dict[str, Any]:
    """A JSON body that must be an object."""
    try:
        obj = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"The body is not valid JSON: {exc}", reason="INVALID_JSON") from None
    if not isinstance(obj, dict):
        raise InvalidArgument("The body must be a JSON object.", reason="INVALID_JSON")
    return obj


def from_object(obj: dict[str, Any], message_type: type[M]) -> M:
    """A parsed JSON object as `message_type` (see `decode`)."""
    fields = message_type.DESCRIPTOR.fields_by_name
    by_json_name = {f.json_name: f for f in message_type.DESCRIPTOR.fields}
    for key, value in obj.items():
        field = fields.get(key) or by_json_name.get(key)
        if field is not None and field.is_repeated and isinstance(value, str):
            obj[key] = [value]
    message = message_type()
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=True)
    except json_format.ParseError:
        raise _field_error(obj, message_type) from None
    return message


def _field_error(obj: dict[str, Any], message_type: type[Message]) -> InvalidArgument:
    """Find the first field that does not parse alone, and say what it should be."""
    for key, value in obj.items():
        try:
            json_format.ParseDict({key: value}, message_type(), ignore_unknown_fields=True)
        except json_format.ParseError:
            field = (message_type.DESCRIPTOR.fields_by_name.get(key)
                     or {f.json_name: f for f in message_type.DESCRIPTOR.fields}[key])
            kind = _KINDS.get(field.type, "an integer")
            if field.is_repeated:
                kind = f"{kind} or a list of them"
            return InvalidArgument(f"{field.name} must be {kind}; got {_preview(value)}",
                                   param=field.name, reason="INVALID_TYPE")
    return InvalidArgument("The body does not match the request schema.", reason="INVALID_TYPE")


def _preview(value: Any) -> str:
    """The start of `value` as JSON, for a message. A value nested deeper than the encoder
    goes (orjson stops at 255 levels; the decoder takes 1,024) is named, not shown."""
    try:
        text = orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, RecursionError):
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= 40 else text[:37] + "..."


def encode(message: Message, unset_when_empty: Collection[str] = (), *,
           int64_as_string: bool = False) -> bytes:
    """`message` as JSON bytes (see the module docstring for the mapping); the fields named
    in `unset_when_empty` (full names) are left out when they are 0 or empty, and 64-bit
    integers are strings with `int64_as_string` (the proto3 JSON mapping's own choice)."""
    return orjson.dumps(to_json_value(message, unset_when_empty, int64_as_string))


def answer(message: Message, unset_when_empty: Collection[str] = (), *,
           int64_as_string: bool = True) -> httpbody_pb2.HttpBody:
    """A typed answer as a REST door's HttpBody of JSON (`encode`). 64-bit integers are
    strings unless told otherwise, as the proto3 JSON mapping (and Envoy, which printed these
    answers before) has them."""
    return httpbody_pb2.HttpBody(content_type=JSON, data=encode(
        message, unset_when_empty, int64_as_string=int64_as_string))


def rest_door(method: Callable[[Any, Any, Any], Awaitable[Message]],
              unset_when_empty: Collection[str] = ()) -> Any:
    """The REST door of a servicer's `method`: the same request, its answer as JSON the
    server writes (`answer`). In the servicer's class: `XxxHttp = rest_door(Xxx, ...)`
    (typed Any: it takes the place of the generated base class's method)."""
    async def door(servicer: Any, request: Any, context: Any) -> httpbody_pb2.HttpBody:
        return answer(await method(servicer, request, context), unset_when_empty)

    door.__name__ = door.__qualname__ = f"{method.__name__}Http"
    return door


def to_json_value(message: Message, unset_when_empty: Collection[str] = (),
                  int64_as_string: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            if not value and field.full_name in unset_when_empty:
                continue
            entry = _map_value(field)
            if entry is not None:
                out[field.name] = {_map_key(key): _scalar(entry, item, unset_when_empty,
                                                          int64_as_string)
                                   for key, item in value.items()}
            else:
                out[field.name] = [_scalar(field, item, unset_when_empty, int64_as_string)
                                   for item in value]
        elif field.has_presence:
            if message.HasField(field.name):
                out[field.name] = _scalar(field, value, unset_when_empty, int64_as_string)
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if value:
                out[field.name] = _scalar(field, value, unset_when_empty, int64_as_string)
        elif value or field.full_name not in unset_when_empty:
            out[field.name] = _scalar(field, value, unset_when_empty, int64_as_string)
    return out


def _map_value(field: Any) -> Any:
    """The value field of a map field's entries; None when `field` is not a map."""
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        return field.message_type.fields_by_name["value"]
    return None


def _map_key(key: Any) -> str:
    """A map key as the proto3 JSON mapping writes it: always a string."""
    return ("true" if key else "false") if isinstance(key, bool) else str(key)


def _scalar(field: Any, value: Any, unset_when_empty: Collection[str],
            int64_as_string: bool) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return value.ToJsonString()
        return to_json_value(value, unset_when_empty, int64_as_string)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if int64_as_string and field.type in _INT64:
        return str(value)
    return value
