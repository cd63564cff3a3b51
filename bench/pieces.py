"""The CPU cost of each piece of our request path, measured alone in this process: where a
request's time goes, and what the choices in docs/performance.md saved."""

from __future__ import annotations

import asyncio
import io
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import structlog
from google import genai
from google.genai import types as genai_types

from aigne.hub.v1 import image_service_pb2 as pb
from bench.fake_provider import tiny_png
from service import db
from service.accounting.charge import Charge
from service.accounting.key_cache import KeyCache
from service.accounting.keys import KeyStore
from service.accounting.quotas import Quotas
from service.accounting.usage import UsageRecorder
from service.catalog.models import load_registry
from service.config import Settings
from service.contract import json_codec
from service.contract.images import image_request
from service.errors import KnownSecrets
from service.generation import validation
from service.net.fetch import GuardedFetcher, image_fetch_limits
from service.ops.metrics import Metrics
from service.providers.base import ProviderDeps
from service.providers.google import GoogleProvider
from service.providers.imaging import verified_mime_type
from service.providers.openai import OpenAIProvider
from service.routing.deployments import Deployment
from service.rpc.call import Call

BODY = (b'{"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "size": "1024x1024", '
        b'"response_format": "b64_json"}')


async def cpu_micros(action: Callable[[], Awaitable[object]], count: int = 2000) -> float:
    for _ in range(count // 10):
        await action()
    started = time.process_time()
    for _ in range(count):
        await action()
    return (time.process_time() - started) / count * 1e6


def measure(provider_url: str, provider_key: str) -> list[tuple[str, float]]:
    return asyncio.run(_measure(provider_url, provider_key))


async def _measure(provider_url: str, provider_key: str) -> list[tuple[str, float]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'hub.db'}"
        engine = db.create_engine(url)
        await db.migrate(engine)
        database = db.Database(engine)
        keys = KeyStore(database, b"bench-secret")
        _, token = await keys.create("bench")
        cache = KeyCache(keys, url)
        results.append(("API key lookup in the database (SQLAlchemy async, aiosqlite)",
                         await cpu_micros(lambda: keys.authenticate(f"Bearer {token}"))))
        results.append(("API key lookup, cached (KeyCache: key_generation row + dict)",
                         await cpu_micros(lambda: cache.authenticate(f"Bearer {token}"))))
        key = await keys.authenticate(f"Bearer {token}")
        quotas = Quotas(database)
        usage = UsageRecorder(database, Decimal(1000))
        results.append(("quota reservation (SQLite, day and month counters)",
                         await cpu_micros(lambda: quotas.reserve(key, 1))))

        async def record() -> None:
            charge = Charge(request_id="r", door="rest", accepted_at=time.time(), key=key,
                            quotas=quotas, ledger=usage, model="gpt-image-2")
            await charge.reserve(1)
            charge.images = 1
            await charge.settle("OK", 200)

        reserve_and_record = await cpu_micros(record)
        results.append(("usage record and settling (SQLite)",
                         reserve_and_record - results[-1][1]))
        await engine.dispose()

    deps = ProviderDeps(GuardedFetcher(image_fetch_limits(Settings())), KnownSecrets())
    provider = OpenAIProvider.build(
        Deployment(id="bench", name="bench", kind="openai", base_url=f"{provider_url}/v1"),
        provider_key, deps)
    registry = load_registry(None)
    request = json_codec.decode(BODY, pb.GenerateRequest)
    job = validation.plan(image_request(request), registry.route(request.model)).job
    results.append(("upstream call, the SDK's request on bare aiohttp (OpenAIProvider)",
                    await cpu_micros(lambda: provider.generate(job))))
    await provider.aclose()
    results.append(("upstream call, openai SDK with its response models (images.generate)",
                    await _sdk_micros(provider_url, provider_key)))
    results += await _gemini_micros(provider_url, provider_key, deps)

    async def decode() -> None:
        decoded = json_codec.decode(BODY, pb.GenerateRequest)
        validation.plan(image_request(decoded), registry.route(decoded.model))

    results.append(("REST body decode, model routing and validation",
                    await cpu_micros(decode)))
    png = tiny_png()
    results.append(("image check of the 16x16 PNG (verified_mime_type)",
                    await cpu_micros(_sync(lambda: verified_mime_type(png)))))
    answer = pb.GenerateResponse(created=1, data=[pb.Image(b64_json=png)], output_format="png")
    results.append(("REST answer encode (json_codec.encode)",
                    await cpu_micros(_sync(lambda: json_codec.encode(answer)))))
    results.append(("the JSON log line (structlog)", await _log_line_micros()))
    metrics = Metrics()
    call = Call(charge=Charge(request_id="r", door="rest", accepted_at=time.time()),
                method="GenerateOrStreamHttp", deadline=0.0)
    call.charge.response_format, call.charge.images = "b64_json", 1
    call.charge.bytes = len(png)

    def observe() -> None:
        metrics.started(call)
        metrics.finished(call, "OK")

    results.append(("metrics (in flight, counters, histogram)", await cpu_micros(_sync(observe))))
    return results


def _sync(action: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        action()

    return run


async def _sdk_micros(provider_url: str, provider_key: str) -> float:
    try:
        import openai
    except ImportError:
        return float("nan")
    client = openai.AsyncOpenAI(api_key=provider_key, base_url=f"{provider_url}/v1",
                                max_retries=0)
    try:
        return await cpu_micros(lambda: client.images.generate(
            model="gpt-image-2", prompt="a lighthouse at dawn", n=1, size="1024x1024",
            quality="auto"), 1000)
    finally:
        await client.close()


async def _gemini_micros(provider_url: str, provider_key: str, deps: ProviderDeps
                         ) -> list[tuple[str, float]]:
    """A Gemini generation (the fake answers generateContent too): ours, and the SDK's own
    call with its response models."""
    provider = GoogleProvider.build(
        Deployment(id="bench-gemini", name="bench-gemini", kind="gemini", base_url=provider_url),
        provider_key, deps)
    registry = load_registry(None)
    request = pb.GenerateRequest(model="gemini-3.1-flash-image", prompt="a lighthouse at dawn",
                                 size="1024x1024")
    job = validation.plan(image_request(request), registry.route(request.model)).job
    ours = await cpu_micros(lambda: provider.generate(job), 1000)
    await provider.aclose()
    client = genai.Client(api_key=provider_key,
                          http_options=genai_types.HttpOptions(base_url=provider_url))
    config = genai_types.GenerateContentConfig(
        response_modalities=["TEXT", "IMAGE"],
        image_config=genai_types.ImageConfig(aspect_ratio="1:1", image_size="1K"))
    try:
        sdks = await cpu_micros(lambda: client.aio.models.generate_content(
            model=job.model.upstream, contents=[job.prompt], config=config), 1000)
    finally:
        await client.aio.aclose()
    return [("Gemini call, the SDK's request on bare aiohttp (GoogleProvider)", ours),
            ("Gemini call, google-genai SDK, its response models (generate_content)", sdks)]


async def _log_line_micros() -> float:
    sink = io.StringIO()
    log = structlog.wrap_logger(structlog.PrintLogger(file=sink), processors=[
        structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer()])

    def line() -> None:
        log.info("request", request_id="abc", method="GenerateOrStreamHttp", door="rest",
                 key_id="key_0123456789abcdef", status="OK", duration_ms=1.2, model="gpt-image-2",
                 served="gpt-image-2", response_format="b64_json", upstream_ms=0.4, images=1,
                 image_bytes=527, n=1)
        sink.seek(0)
        sink.truncate()

    return await cpu_micros(_sync(line))


if __name__ == "__main__":
    for name, micros in measure(sys.argv[1], sys.argv[2]):
        print(f"{name:66} {micros:8.1f}")
