"""JSON Schemas of the proto's messages, enums and fields, as the REST door encodes them.

Messages become shared components (`#/components/schemas/Name`), each made the first time it
is referred to. Envoy prints 64-bit integers as JSON strings; a `server_encoded` schema is one
the server encodes itself (an HttpBody door's typed sibling), where they are numbers.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import descriptor_pb2

from service.cli.openapi_descriptors import Descriptors

Schema = dict[str, Any]
FieldProto = descriptor_pb2.FieldDescriptorProto

PACKAGE = "aigne.hub.v1"
# A field comment saying "Required." (or "Required;") makes the field required.
REQUIRED = re.compile(r"(?:^|\s)Required[.;]")

_SCALARS: dict[int, Schema] = {
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldProto.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldProto.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldProto.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    FieldProto.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
}
_INT64 = {FieldProto.TYPE_INT64, FieldProto.TYPE_SINT64, FieldProto.TYPE_SFIXED64,
          FieldProto.TYPE_UINT64, FieldProto.TYPE_FIXED64}
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
}


class Schemas:
    """The schemas of one document; `components()` answers those referred to so far."""

    def __init__(self, descriptors: Descriptors) -> None:
        self.d = descriptors
        self._components: dict[str, Schema] = {}

    def components(self) -> dict[str, Schema]:
        return dict(sorted(self._components.items()))

    def ref(self, name: str, server_encoded: bool) -> Schema:
        if name in WELL_KNOWN:
            return dict(WELL_KNOWN[name])
        if name in self.d.enums:
            enum = self.d.enums[name]
            return {"type": "string", "enum": [v.name for v in enum.proto.value],
                    "description": enum.comment}
        key = name.removeprefix(f"{PACKAGE}.")
        if key not in self._components:
            self._components[key] = {}  # placeholder: recursive messages refer to themselves
            message = self.d.messages[name]
            self._components[key] = self.object(name, list(message.proto.field), server_encoded)
        return {"$ref": f"#/components/schemas/{key}"}

    def object(self, name: str, fields: list[FieldProto], server_encoded: bool) -> Schema:
        schema: Schema = {"type": "object", "description": self.d.messages[name].comment,
                          "properties": {}}
        required = []
        for field in fields:
            comment = self.d.fields[(name, field.name)]
            prop = self.field(field, server_encoded)
            schema["properties"][field.name] = (
                {**prop, "description": comment} if "$ref" not in prop
                else {"allOf": [prop], "description": comment})
            if REQUIRED.search(comment):
                required.append(field.name)
        if required:
            schema["required"] = required
        return schema

    def field(self, field: FieldProto, server_encoded: bool) -> Schema:
        if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
            type_name = field.type_name.lstrip(".")
            entry = self.d.messages.get(type_name)
            if entry is not None and entry.proto.options.map_entry:
                value = next(f for f in entry.proto.field if f.name == "value")
                return {"type": "object",
                        "additionalProperties": self.field(value, server_encoded)}
            item = self.ref(type_name, server_encoded)
        elif field.type in _INT64:
            item = ({"type": "integer", "format": "int64"} if server_encoded else
                    {"type": "string", "format": "int64",
                     "description": "A 64-bit integer, as a JSON string."})
        else:
            item = dict(_SCALARS[field.type])
        if field.label == FieldProto.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item
