"""The parts of OpenAI's published OpenAPI document (github.com/openai/openai-openapi,
components.schemas) that our answers must satisfy, written out as JSON Schema: ImagesResponse
with Image and ImageGenUsage, and the error object OpenAI-compatible clients read."""

import json
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

IMAGE_GEN_TOKEN_DETAILS = {
    "type": "object",
    "properties": {"text_tokens": {"type": "integer"}, "image_tokens": {"type": "integer"}},
    "required": ["text_tokens", "image_tokens"],
}

IMAGES_RESPONSE = {
    "type": "object",
    "properties": {
        "created": {"type": "integer"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "b64_json": {"type": "string"},
                    "url": {"type": "string", "format": "uri"},
                    "revised_prompt": {"type": "string"},
                },
            },
        },
        "background": {"type": "string", "enum": ["transparent", "opaque"]},
        "output_format": {"type": "string", "enum": ["png", "webp", "jpeg"]},
        "size": {"type": "string", "enum": ["1024x1024", "1024x1536", "1536x1024"]},
        "quality": {"type": "string", "enum": ["low", "medium", "high"]},
        "usage": {
            "type": "object",
            "properties": {
                "input_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "output_tokens_details": IMAGE_GEN_TOKEN_DETAILS,
                "input_tokens_details": IMAGE_GEN_TOKEN_DETAILS,
            },
            "required": ["input_tokens", "total_tokens", "output_tokens", "input_tokens_details"],
        },
    },
    "required": ["created"],
}

ERROR_RESPONSE = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}


# OpenAI's own document, the part kept in tests/data (see its info.x-source): every 200 answer
# and streamed event of the OpenAI doors is validated against the schema OpenAI publishes.
OPENAI_DOCUMENT = json.loads(
    (Path(__file__).with_name("data") / "openai-openapi-images.json").read_text())
_REGISTRY = Registry().with_resource(  # type: ignore[call-arg]
    "openai.json", Resource.from_contents(OPENAI_DOCUMENT, default_specification=DRAFT202012))


def assert_openai(instance: object, schema: str) -> None:
    """`instance` is valid as OpenAI's `components.schemas[schema]`."""
    validator = Draft202012Validator({"$ref": f"openai.json#/components/schemas/{schema}"},
                                     registry=_REGISTRY)
    validator.validate(instance)
