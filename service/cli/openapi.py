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

This module is the command; the proto is read by openapi_descriptors.py, its messages become
schemas in openapi_schemas.py and the document is put together in openapi_document.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from service.cli.openapi_descriptors import Descriptors
from service.cli.openapi_document import Generator
from service.cli.openapi_schemas import Schema


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
