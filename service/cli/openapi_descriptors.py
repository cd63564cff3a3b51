"""The proto as the OpenAPI generator reads it: the messages, enums, fields and services of a
FileDescriptorSet by full name, each with its comment (the descriptor set must carry source
info, as `make gen` builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2


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


def _clean(comment: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(lines).strip()
