"""A fake Google API: Gemini `:generateContent` (Gemini API and Vertex paths) and Vertex
`:predict` (Imagen), answering with real images in Google's JSON shapes."""

from __future__ import annotations

import base64
import re

from tests.fakes.images import picture
from tests.fakes.server import FakeServer, Received, Reply

PATH = re.compile(r"^/(?:v1|v1beta|v1beta1)/(?:projects/[^/]+/locations/[^/]+/)?"
                  r"(?:publishers/google/)?models/([^/:]+):(generateContent|predict)$")
EDGES = {"1K": 1024, "2K": 2048, "4K": 4096}


def google_error(code: int, status: str, message: str, details: list | None = None) -> Reply:
    return Reply(code, {"error": {"code": code, "message": message, "status": status,
                                  "details": details or []}})


def shape(aspect_ratio: str | None, image_size: str | None) -> tuple[int, int]:
    """The pixel size Google makes for an aspect ratio and size class."""
    w, h = (int(x) for x in (aspect_ratio or "1:1").split(":"))
    long_edge = EDGES.get(image_size or "1K", 1024)
    if w >= h:
        return long_edge, round(long_edge * h / w)
    return round(long_edge * w / h), long_edge


class FakeGoogle(FakeServer):
    api_key = "AIza-test-fake-google-key-123456"

    def route(self, method: str, path: str) -> str | None:
        match = PATH.match(path.split("?")[0])
        return match.group(2) if match else None

    def model_of(self, request: Received) -> str:
        match = PATH.match(request.path.split("?")[0])
        return match.group(1) if match else ""

    def answer(self, route: str, request: Received) -> Reply:
        if request.headers.get("x-goog-api-key") != self.api_key:
            return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid "
                                "API key.", [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                              "reason": "API_KEY_INVALID",
                                              "domain": "googleapis.com"}])
        return self._gemini(request) if route == "generateContent" else self._imagen(request)

    def _gemini(self, request: Received) -> Reply:
        config = (request.json or {}).get("generationConfig", {})
        if config.get("candidateCount", 1) > 1:
            return google_error(400, "INVALID_ARGUMENT", "Multiple candidates is not enabled")
        image_config = config.get("imageConfig", {})
        w, h = shape(image_config.get("aspectRatio"), image_config.get("imageSize"))
        parts = (request.json or {})["contents"][0]["parts"]
        inputs = sum(1 for p in parts if "inlineData" in p or "inline_data" in p)
        data = base64.b64encode(picture(w, h)).decode()
        return Reply(200, {
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "Here is your image."},
                {"inlineData": {"mimeType": "image/png", "data": data}}]},
                "finishReason": "STOP", "index": 0}],
            "usageMetadata": {
                "promptTokenCount": 12 + 1120 * inputs, "candidatesTokenCount": 1130,
                "totalTokenCount": 1142 + 1120 * inputs,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}] + (
                    [{"modality": "IMAGE", "tokenCount": 1120 * inputs}] if inputs else []),
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 10},
                                            {"modality": "IMAGE", "tokenCount": 1120}]},
            "modelVersion": self.model_of(request)})

    def _imagen(self, request: Received) -> Reply:
        parameters = (request.json or {}).get("parameters", {})
        w, h = shape(parameters.get("aspectRatio"), parameters.get("sampleImageSize"))
        mime = parameters.get("outputOptions", {}).get("mimeType", "image/png")
        fmt = {"image/jpeg": "JPEG", "image/webp": "WEBP"}.get(mime, "PNG")
        predictions = [{"bytesBase64Encoded": base64.b64encode(picture(w, h, i, fmt)).decode(),
                        "mimeType": mime} for i in range(parameters.get("sampleCount", 1))]
        return Reply(200, {"predictions": predictions})
