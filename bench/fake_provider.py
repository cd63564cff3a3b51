"""A fake OpenAI images endpoint that answers at once, with bytes built before it listens.

`POST /v1/images/generations` (any path, in fact, but Gemini's `:generateContent`, which
answers a GenerateContentResponse with one tiny PNG) answers an OpenAI ImagesResponse: for
n=10, ten distinct 1024x1024 noise PNGs of about 2.4 MB each (as large as real models'
answers); otherwise one tiny PNG, so that small requests measure the gateways, not the
transfer. A bare asyncio protocol with keep-alive, so that the fake costs little of the
CPU it shares with what is measured.

    python -m bench.fake_provider PORT [DELAY_SECONDS]

With DELAY_SECONDS, every answer leaves that long after its request (a slow model: the
burst case holds a thousand requests waiting).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys

from PIL import Image

BIG_N = 10


def noise_png(seed: int, size: int = 1024) -> bytes:
    """A noise PNG of 6 bits per channel: ~2.4 MB at 1024x1024, like a photo-real model's."""
    image = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    image = image.point(lambda v: v & 0xFC)
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 120, 200)).save(out, "PNG")
    return out.getvalue()


def images_response(files: list[bytes]) -> bytes:
    return json.dumps({
        "created": 1795770000, "background": "opaque", "output_format": "png",
        "quality": "medium", "size": "1024x1024",
        "data": [{"b64_json": base64.b64encode(f).decode()} for f in files],
        "usage": {"total_tokens": 100, "input_tokens": 10, "output_tokens": 90,
                  "input_tokens_details": {"text_tokens": 10, "image_tokens": 0},
                  "output_tokens_details": {"text_tokens": 0, "image_tokens": 90}},
    }).encode()


def gemini_response(file: bytes) -> bytes:
    return json.dumps({
        "candidates": [{"content": {"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(file).decode()}}]},
            "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1290,
                          "totalTokenCount": 1295, "candidatesTokensDetails": [
                              {"modality": "IMAGE", "tokenCount": 1290}]},
        "modelVersion": "gemini-3.1-flash-image"}).encode()


def http_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class Answers:
    def __init__(self) -> None:
        self.small = http_response(images_response([tiny_png()]))
        self.big = http_response(images_response([noise_png(i) for i in range(BIG_N)]))
        self.gemini = http_response(gemini_response(tiny_png()))

    def for_request(self, head: bytes, body: bytes) -> bytes:
        if b":generatecontent" in head.split(b"\r\n", 1)[0]:
            return self.gemini
        try:
            n = json.loads(body).get("n", 1)
        except (ValueError, AttributeError):
            n = 1
        return self.big if n == BIG_N else self.small


class Connection(asyncio.Protocol):
    def __init__(self, answers: Answers, delay: float = 0.0) -> None:
        self._answers = answers
        self._delay = delay
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip() == b"content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4:end + 4 + length])
            del self._buffer[:end + 4 + length]
            assert self._transport is not None
            answer, close = self._answers.for_request(head, body), b"connection: close" in head
            if self._delay:  # answers keep their order: each leaves `delay` after its request
                asyncio.get_running_loop().call_later(self._delay, self._send, answer, close)
            else:
                self._send(answer, close)
            if close:
                return

    def _send(self, answer: bytes, close: bool) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._transport.write(answer)
        if close:
            self._transport.close()


async def serve(port: int, delay: float = 0.0) -> None:
    answers = Answers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(answers, delay), "127.0.0.1", port,
                                      backlog=4096)
    print(f"ready {len(answers.big)}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
