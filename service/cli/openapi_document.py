"""The OpenAPI document of the REST door: one operation per `google.api.http` binding of each
method, read as Envoy's transcoder reads it (path variables, the body field or `*`, the rest
as query parameters), plus the parts every document has (info, security, the error body).
The schemas of messages come from openapi_schemas.py; service/cli/openapi.py says how the
HttpBody doors and their typed siblings are described.
"""

from __future__ import annotations

import re

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from service.cli.openapi_descriptors import Descriptors, Element
from service.cli.openapi_schemas import (
    PACKAGE,
    REQUIRED,
    WELL_KNOWN,
    FieldProto,
    Schema,
    Schemas,
)

# Plumbing of the console itself, not part of the API.
EXCLUDED_SERVICES = frozenset({f"{PACKAGE}.ConsoleService"})
HTTP_BODY = "google.api.HttpBody"
# The field a sibling request wraps a generation in; REST takes that generation flat.
WRAPPED_REQUEST = "request"
# What HttpBody answers carry, where it is not JSON.
RAW_ANSWERS = {f"{PACKAGE}.ImageService.GetImage": ("image/*", "The image file's bytes.")}

INFO: Schema = {
    "title": "AIGNE Hub image service",
    "version": PACKAGE.rsplit(".", 1)[-1],
    "description": (
        "The REST door of the hub: JSON through Envoy's gRPC-JSON transcoder, "
        "generated from the proto files under `proto/` (`make gen`). The same "
        "methods are reached over gRPC at the same address (the operation's "
        "`x-grpc-method`). Send the API key as `Authorization: Bearer <key>`. "
        "Errors are `{\"error\": {message, type, param, code}}`."),
}
SECURITY_SCHEMES: Schema = {"bearerAuth": {
    "type": "http", "scheme": "bearer",
    "description": "An API key (`ahk-…`); admin keys for AdminService."}}
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
ERROR_RESPONSE: Schema = {
    "description": "An error, with the HTTP status of its kind.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
# Doors that answer their sibling's JSON, or with `stream: true` OpenAI's image events (the
# method's description says so): documented by their JSON answer.
OPENAI_DOORS = {"GenerateOrStreamHttp": "Generate"}


class Generator:
    """Builds the document; `server_encoded` schemas print 64-bit integers as numbers."""

    def __init__(self, descriptors: Descriptors, public_methods: frozenset[str]) -> None:
        self.d = descriptors
        self.public = public_methods
        self.schemas = Schemas(descriptors)

    def document(self) -> Schema:
        paths, tags = self._paths()
        return {
            "openapi": "3.1.0",
            "info": INFO,
            "servers": [{"url": "/"}],
            "security": [{"bearerAuth": []}],
            "tags": tags,
            "paths": dict(sorted(paths.items())),
            "components": {
                "securitySchemes": SECURITY_SCHEMES,
                "schemas": {"Error": ERROR_SCHEMA, **self.schemas.components()},
                "responses": {"Error": ERROR_RESPONSE},
            },
        }

    def _paths(self) -> tuple[dict[str, dict[str, Schema]], list[Schema]]:
        """The operations by path and verb, and a tag per service."""
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
        return paths, tags

    def _operation(self, service_name: str, short: str, method: Element,
                   typed: dict[str, Element], binding: http_pb2.HttpRule,
                   path_params: list[str]) -> Schema:
        proto = method.proto
        full = f"{service_name}.{proto.name}"
        request_type = proto.input_type.lstrip(".")
        response_type = proto.output_type.lstrip(".")
        # An HttpBody door with a typed sibling (GenerateHttp beside Generate) carries the
        # sibling's messages as JSON, encoded by the server.
        sibling = typed.get(OPENAI_DOORS.get(proto.name, proto.name.removesuffix("Http"))) \
            if proto.name.endswith("Http") else None
        # A door that takes its sibling's own request (ListKeysHttp beside ListKeys) is that
        # method on REST: named and told by it, its answer printed as the proto3 JSON
        # mapping has it (64-bit integers as strings), without what is not set.
        reprint = sibling is not None and sibling.proto.input_type == proto.input_type
        named = sibling if reprint and sibling is not None else method
        operation: Schema = {
            "operationId": named.proto.name,
            "tags": [short],
            "summary": _first_sentence(named.comment),
            "description": named.comment,
            "x-grpc-method": f"{service_name}/{(sibling or method).proto.name}",
        }
        if f"/{service_name}/{proto.name}" in self.public:
            operation["security"] = []
        body, parameters = self._request(request_type, binding, sibling, path_params)
        if body is not None:
            operation["requestBody"] = body
        if parameters:
            operation["parameters"] = parameters
        operation["responses"] = {"200": self._answer(
            full, response_type, sibling, proto.server_streaming
            and proto.name not in OPENAI_DOORS, int64_numbers=not reprint),
                                  "4XX": {"$ref": "#/components/responses/Error"},
                                  "5XX": {"$ref": "#/components/responses/Error"}}
        return operation

    def _request(self, request_type: str, binding: http_pb2.HttpRule, sibling: Element | None,
                 path_params: list[str]) -> tuple[Schema | None, list[Schema]]:
        """The request body (None: no body) and parameters: the path's variables, then the
        body the binding names, or else every other field as a query parameter."""
        message = self.d.messages[request_type].proto
        fields = {f.name: f for f in message.field}
        parameters = [self._parameter(request_type, fields[name], "path") for name in path_params]
        body = binding.body
        if body == "*":
            rest = [f for f in message.field if f.name not in path_params]
            if not rest:
                return None, parameters
            return {"required": True, "content": {"application/json": {
                "schema": self.schemas.object(request_type, rest, False)}}}, parameters
        if body:
            field = fields[body]
            if field.type_name.lstrip(".") == HTTP_BODY and sibling is not None:
                schema = self._sibling_body(sibling.proto.input_type.lstrip("."))
            else:
                schema = self.schemas.field(field, False)
            return {"required": True, "description": self.d.fields[(request_type, body)],
                    "content": {"application/json": {"schema": schema}}}, parameters
        return None, parameters + self._query(request_type, message, set(path_params), "")

    def _sibling_body(self, name: str) -> Schema:
        """The REST body of an HttpBody door: its sibling's request, a wrapped generation
        taken flat."""
        fields = list(self.d.messages[name].proto.field)
        wrapped = next((f for f in fields if f.name == WRAPPED_REQUEST
                        and f.type == FieldProto.TYPE_MESSAGE), None)
        if wrapped is None:
            return self.schemas.ref(name, True)
        inner = self.schemas.ref(wrapped.type_name.lstrip("."), True)
        rest = [f for f in fields if f is not wrapped]
        return {"allOf": [inner, self.schemas.object(name, rest, True)]} if rest else inner

    def _answer(self, full: str, response_type: str, sibling: Element | None,
                streaming: bool = False, int64_numbers: bool = True) -> Schema:
        if response_type != HTTP_BODY:
            return {"description": self.d.messages[response_type].comment or "OK",
                    "content": {"application/json": {
                        "schema": self.schemas.ref(response_type, False)}}}
        if sibling is not None and streaming:
            typed = sibling.proto.output_type.lstrip(".")
            return {"description": "Server-Sent Events (`text/event-stream`), one per "
                                   f"{typed.rsplit('.', 1)[-1]}: "
                                   f"{self.d.messages[typed].comment}",
                    "content": {"text/event-stream": {
                        "schema": {"type": "string"},
                        "x-event-schema": self.schemas.ref(typed, True)}}}
        if sibling is not None:
            typed = sibling.proto.output_type.lstrip(".")
            return {"description": self.d.messages[typed].comment,
                    "content": {"application/json": {
                        "schema": self.schemas.ref(typed, int64_numbers)}}}
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
            if (field.type == FieldProto.TYPE_MESSAGE and type_name not in WELL_KNOWN
                    and field.label != FieldProto.LABEL_REPEATED):
                out += self._query(type_name, self.d.messages[type_name].proto, set(),
                                   f"{prefix}{field.name}.")
            else:
                out.append(self._parameter(owner, field, "query", prefix))
        return out

    def _parameter(self, owner: str, field: FieldProto, where: str, prefix: str = "") -> Schema:
        parameter: Schema = {"name": prefix + field.name, "in": where,
                     "description": self.d.fields[(owner, field.name)],
                     "schema": self.schemas.field(field, False)}
        if where == "path" or REQUIRED.search(parameter["description"]):
            parameter["required"] = True
        return parameter


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


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[:end + 1]
