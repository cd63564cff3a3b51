"""The OpenAPI 3.1 document of the REST door, generated from the proto.

`make gen` runs `python -m service.cli.openapi` after it builds Envoy's descriptor set: it reads
gen/descriptor/aigne_hub.pb (with source info, so the proto comments become descriptions),
follows each method's `google.api.http` binding as Envoy's transcoder does, and writes
gen/openapi/aigne_hub.openapi.json. CI's check-gen then keeps it in step with the proto.

Bodies follow the proto3 JSON mapping as the REST door speaks it: snake_case names, 64-bit
integers as strings and timestamps as RFC 3339 where Envoy prints the answer; where a method
takes or answers `google.api.HttpBody` and has a typed sibling (`GenerateHttp` beside
`Generate`), the body is that sibling's message as the server encodes it (64-bit integers as
numbers). A sibling request that wraps a generation in its field `request`
(StreamGenerateRequest, CreateJobRequest) is taken flat over REST: the generation's fields,
with the wrapper's other fields (`webhook_url`) beside them. A server-streaming HttpBody door
answers Server-Sent Events, one per message of its sibling's stream.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

Schema = dict[str, Any]
FieldProto = descriptor_pb2.FieldDescriptorProto

PACKAGE = "aigne.hub.v1"
# Plumbing of the console itself, not part of the API.
EXCLUDED_SERVICES = frozenset({f"{PACKAGE}.ConsoleService"})
HTTP_BODY = "google.api.HttpBody"
# A field comment saying "Required." (or "Required;") makes the field required.
REQUIRED = re.compile(r"(?:^|\s)Required[.;]")
# The field a sibling request wraps a generation in; REST takes that generation flat.
WRAPPED_REQUEST = "request"
# What HttpBody answers carry, where it is not JSON.
RAW_ANSWERS = {f"{PACKAGE}.ImageService.GetImage": ("image/*", "The image file's bytes.")}

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
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
}
ERROR_SCHEMA: Schema = {
    "type": "object",
    "description": "Every REST error, in the shape OpenAI-compatible clients read.",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "code"],
                             "properties": {
        "message": {"type": "string", "description": "What went wrong, for people."},
        "type": {"type": "string", "description": "`invalid_request_error`, "
                 "`authentication_error`, `permission_error`, `not_found_error`, "
                 "`rate_limit_error` or `server_error`."},
        "param": {"type": ["string", "null"], "description": "The request field at fault."},
        "code": {"type": "string", "description": "A stable code, e.g. `invalid_value`, "
                 "`daily_quota_exceeded`, `key_revoked`."},
    }}},
}


@dataclass
class Element:
    """A message, enum, service or method of the descriptor set, with its comment."""

    proto: Any
    comment: str


class Descriptors:
    """The messages, enums and services of a FileDescriptorSet, by full name."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, Element] = {}
        self.enums: dict[str, Element] = {}
        self.fields: dict[tuple[str, str], str] = {}
        self.services: list[tuple[str, Element, list[Element]]] = []
        for file in files.file:
            comments = {tuple(loc.path): loc.leading_comments
                        for loc in file.source_code_info.location}
            for i, message in enumerate(file.message_type):
                self._message(f"{file.package}.{message.name}", message, (4, i), comments)
            for i, enum in enumerate(file.enum_type):
                self.enums[f"{file.package}.{enum.name}"] = Element(
                    enum, _clean(comments.get((5, i), "")))
            for i, service in enumerate(file.service):
                methods = [Element(m, _clean(comments.get((6, i, 2, j), "")))
                           for j, m in enumerate(service.method)]
                self.services.append((f"{file.package}.{service.name}",
                                      Element(service, _clean(comments.get((6, i), ""))),
                                      methods))

    def _message(self, name: str, message: descriptor_pb2.DescriptorProto,
                 path: tuple[int, ...], comments: dict[tuple[int, ...], str]) -> None:
        self.messages[name] = Element(message, _clean(comments.get(path, "")))
        for k, field in enumerate(message.field):
            self.fields[(name, field.name)] = _clean(comments.get((*path, 2, k), ""))
        for j, nested in enumerate(message.nested_type):
            self._message(f"{name}.{nested.name}", nested, (*path, 3, j), comments)
        for j, enum in enumerate(message.enum_type):
            self.enums[f"{name}.{enum.name}"] = Element(
                enum, _clean(comments.get((*path, 4, j), "")))


class Generator:
    """Builds the document; `server_encoded` schemas print 64-bit integers as numbers."""

    def __init__(self, descriptors: Descriptors, public_methods: frozenset[str]) -> None:
        self.d = descriptors
        self.public = public_methods
        self.schemas: dict[str, Schema] = {}

    def document(self) -> Schema:
        paths: dict[str, dict[str, Schema]] = {}
        tags = []
        for service_name, service, methods in self.d.services:
            if service_name in EXCLUDED_SERVICES or not service_name.startswith(PACKAGE):
                continue
            short = service_name.rsplit(".", 1)[-1]
            tags.append({"name": short, "description": service.comment})
            typed = {m.proto.name: m for m in methods}
            for method in methods:
                if not method.proto.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.proto.options.Extensions[annotations_pb2.http]
                for index, binding in enumerate([rule, *rule.additional_bindings]):
                    verb, template = _verb_and_path(binding)
                    path, path_params = _openapi_path(template)
                    operation = self._operation(service_name, short, method, typed, binding,
                                                path_params)
                    if index:  # operation ids are unique: `Name_1` for the second path...
                        operation["operationId"] += f"_{index}"
                    paths.setdefault(path, {})[verb] = operation
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "AIGNE Hub image service",
                "version": PACKAGE.rsplit(".", 1)[-1],
                "description": (
                    "The REST door of the hub: JSON through Envoy's gRPC-JSON transcoder, "
                    "generated from the proto files under `proto/` (`make gen`). The same "
                    "methods are reached over gRPC at the same address (the operation's "
                    "`x-grpc-method`). Send the API key as `Authorization: Bearer <key>`. "
                    "Errors are `{\"error\": {message, type, param, code}}`."),
            },
            "servers": [{"url": "/"}],
            "security": [{"bearerAuth": []}],
            "tags": tags,
            "paths": dict(sorted(paths.items())),
            "components": {
                "securitySchemes": {"bearerAuth": {
                    "type": "http", "scheme": "bearer",
                    "description": "An API key (`ahk-…`); admin keys for AdminService."}},
                "schemas": {"Error": ERROR_SCHEMA, **dict(sorted(self.schemas.items()))},
                "responses": {"Error": {
                    "description": "An error, with the HTTP status of its kind.",
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/Error"}}}}},
            },
        }

    def _operation(self, service_name: str, short: str, method: Element,
                   typed: dict[str, Element], binding: http_pb2.HttpRule,
                   path_params: list[str]) -> Schema:
        proto = method.proto
        full = f"{service_name}.{proto.name}"
        request_type = proto.input_type.lstrip(".")
        response_type = proto.output_type.lstrip(".")
        # An HttpBody door with a typed sibling (GenerateHttp beside Generate) carries the
        # sibling's messages as JSON, encoded by the server.
        sibling = typed.get(proto.name.removesuffix("Http")) if proto.name.endswith("Http") \
            else None
        operation: Schema = {
            "operationId": proto.name,
            "tags": [short],
            "summary": _first_sentence(method.comment),
            "description": method.comment,
            "x-grpc-method": f"{service_name}/{(sibling or method).proto.name}",
        }
        if f"/{service_name}/{proto.name}" in self.public:
            operation["security"] = []
        message = self.d.messages[request_type].proto
        fields = {f.name: f for f in message.field}
        parameters = [self._parameter(request_type, fields[name], "path") for name in path_params]
        body = binding.body
        if body == "*":
            rest = [f for f in message.field if f.name not in path_params]
            if rest:
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": self._object(request_type, rest, False)}}}
        elif body:
            field = fields[body]
            if field.type_name.lstrip(".") == HTTP_BODY and sibling is not None:
                schema = self._sibling_body(sibling.proto.input_type.lstrip("."))
            else:
                schema = self._field_schema(field, False)
            operation["requestBody"] = {"required": True, "description": self.d.fields[
                (request_type, body)], "content": {"application/json": {"schema": schema}}}
        else:
            parameters += self._query(request_type, message, set(path_params), "")
        if parameters:
            operation["parameters"] = parameters
        operation["responses"] = {"200": self._answer(full, response_type, sibling,
                                                      proto.server_streaming),
                                  "4XX": {"$ref": "#/components/responses/Error"},
                                  "5XX": {"$ref": "#/components/responses/Error"}}
        return operation

    def _sibling_body(self, name: str) -> Schema:
        """The REST body of an HttpBody door: its sibling's request, a wrapped generation
        taken flat."""
        fields = list(self.d.messages[name].proto.field)
        wrapped = next((f for f in fields if f.name == WRAPPED_REQUEST
                        and f.type == FieldProto.TYPE_MESSAGE), None)
        if wrapped is None:
            return self._ref(name, True)
        inner = self._ref(wrapped.type_name.lstrip("."), True)
        rest = [f for f in fields if f is not wrapped]
        return {"allOf": [inner, self._object(name, rest, True)]} if rest else inner

    def _answer(self, full: str, response_type: str, sibling: Element | None,
                streaming: bool = False) -> Schema:
        if response_type != HTTP_BODY:
            return {"description": self.d.messages[response_type].comment or "OK",
                    "content": {"application/json": {"schema": self._ref(response_type, False)}}}
        if sibling is not None and streaming:
            typed = sibling.proto.output_type.lstrip(".")
            return {"description": "Server-Sent Events (`text/event-stream`), one per "
                                   f"{typed.rsplit('.', 1)[-1]}: "
                                   f"{self.d.messages[typed].comment}",
                    "content": {"text/event-stream": {
                        "schema": {"type": "string"},
                        "x-event-schema": self._ref(typed, True)}}}
        if sibling is not None:
            typed = sibling.proto.output_type.lstrip(".")
            return {"description": self.d.messages[typed].comment,
                    "content": {"application/json": {"schema": self._ref(typed, True)}}}
        media, text = RAW_ANSWERS.get(full, ("application/octet-stream", "The bytes."))
        return {"description": text,
                "content": {media: {"schema": {"type": "string", "format": "binary"}}}}

    def _query(self, owner: str, message: descriptor_pb2.DescriptorProto, skip: set[str],
               prefix: str) -> list[Schema]:
        """Query parameters: every field not bound to the path, nested ones dotted."""
        out: list[Schema] = []
        for field in message.field:
            if field.name in skip:
                continue
            type_name = field.type_name.lstrip(".")
            if (field.type == FieldProto.TYPE_MESSAGE and type_name not in _WELL_KNOWN
                    and field.label != FieldProto.LABEL_REPEATED):
                out += self._query(type_name, self.d.messages[type_name].proto, set(),
                                   f"{prefix}{field.name}.")
            else:
                out.append(self._parameter(owner, field, "query", prefix))
        return out

    def _parameter(self, owner: str, field: FieldProto, where: str, prefix: str = "") -> Schema:
        parameter: Schema = {"name": prefix + field.name, "in": where,
                     "description": self.d.fields[(owner, field.name)],
                     "schema": self._field_schema(field, False)}
        if where == "path" or REQUIRED.search(parameter["description"]):
            parameter["required"] = True
        return parameter

    def _ref(self, name: str, server_encoded: bool) -> Schema:
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name in self.d.enums:
            enum = self.d.enums[name]
            return {"type": "string", "enum": [v.name for v in enum.proto.value],
                    "description": enum.comment}
        key = name.removeprefix(f"{PACKAGE}.")
        if key not in self.schemas:
            self.schemas[key] = {}  # placeholder: recursive messages refer to themselves
            message = self.d.messages[name]
            self.schemas[key] = self._object(name, list(message.proto.field), server_encoded)
        return {"$ref": f"#/components/schemas/{key}"}

    def _object(self, name: str, fields: list[FieldProto], server_encoded: bool) -> Schema:
        schema: Schema = {"type": "object", "description": self.d.messages[name].comment,
                          "properties": {}}
        required = []
        for field in fields:
            comment = self.d.fields[(name, field.name)]
            prop = self._field_schema(field, server_encoded)
            schema["properties"][field.name] = (
                {**prop, "description": comment} if "$ref" not in prop
                else {"allOf": [prop], "description": comment})
            if REQUIRED.search(comment):
                required.append(field.name)
        if required:
            schema["required"] = required
        return schema

    def _field_schema(self, field: FieldProto, server_encoded: bool) -> Schema:
        if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
            type_name = field.type_name.lstrip(".")
            entry = self.d.messages.get(type_name)
            if entry is not None and entry.proto.options.map_entry:
                value = next(f for f in entry.proto.field if f.name == "value")
                return {"type": "object",
                        "additionalProperties": self._field_schema(value, server_encoded)}
            item = self._ref(type_name, server_encoded)
        elif field.type in _INT64:
            item = ({"type": "integer", "format": "int64"} if server_encoded else
                    {"type": "string", "format": "int64",
                     "description": "A 64-bit integer, as a JSON string."})
        else:
            item = dict(_SCALARS[field.type])
        if field.label == FieldProto.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item


def _verb_and_path(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        return rule.custom.kind.lower(), rule.custom.path
    return str(kind), getattr(rule, str(kind))


def _openapi_path(template: str) -> tuple[str, list[str]]:
    """`/api/admin/keys/{key_id}:revoke` stays; `{path=**}` becomes `{path}`."""
    params: list[str] = []

    def variable(match: re.Match[str]) -> str:
        params.append(match.group(1))
        return "{" + match.group(1) + "}"

    return re.sub(r"\{([a-z_.]+)(?:=[^}]*)?\}", variable, template), params


def _clean(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(lines).strip()


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[:end + 1]


def generate(descriptor: Path, public_methods: frozenset[str]) -> Schema:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    return Generator(Descriptors(files), public_methods).document()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.cli.openapi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("descriptor", type=Path, help="a descriptor set with source info")
    parser.add_argument("output", type=Path, help="where to write the JSON document")
    args = parser.parse_args(argv)
    from service.api.methods import PUBLIC_METHODS  # the methods that need no key

    document = generate(args.descriptor, PUBLIC_METHODS)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
