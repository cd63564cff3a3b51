"""The burst case: N generations sent at once against a provider that answers after a few
seconds (a real model's pace), each on its own connection; what each waited beyond the
provider's own time, how many were served, and the memory the gateway held per waiting
request.

    python -m bench.burst URL AUTH N DELAY_SECONDS PID[,PID...]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from bench import processes


@dataclass
class BurstResult:
    n: int
    statuses: dict[int, int] = field(default_factory=dict)
    added: list[float] = field(default_factory=list)  # seconds beyond the provider's delay
    rss_before: int = 0  # bytes, summed over the gateway's processes
    rss_peak: int = 0

    @property
    def served(self) -> int:
        return self.statuses.get(200, 0)

    def quantile(self, q: float) -> float:
        if not self.added:
            return float("nan")
        ordered = sorted(self.added)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def memory_per_request(self) -> float:
        return (self.rss_peak - self.rss_before) / max(self.n, 1)

    def line(self, name: str) -> str:
        refused = {s: c for s, c in sorted(self.statuses.items()) if s != 200}
        return (f"{name:<28} served {self.served}/{self.n}"
                f"{' refused ' + json.dumps(refused) if refused else ''}; added p50 "
                f"{self.quantile(0.5):.2f} s, p99 {self.quantile(0.99):.2f} s, max "
                f"{max(self.added, default=float('nan')):.2f} s; gateway memory "
                f"+{(self.rss_peak - self.rss_before) / 2**20:.0f} MB "
                f"({self.memory_per_request / 1024:.0f} KB per waiting request)")


async def burst(url: str, auth: str, body: dict, n: int, delay: float,
                pids: list[int]) -> BurstResult:
    result = BurstResult(n, rss_before=int(sum(processes.rss_mb(pid) for pid in pids) * 2**20))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=delay + 300)
    data = json.dumps(body).encode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    go = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        await go.wait()
        started = time.perf_counter()
        try:
            async with session.post(url, data=data, headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        if status == 200:
            result.added.append(time.perf_counter() - started - delay)
        result.statuses[status] = result.statuses.get(status, 0) + 1

    async def watch() -> None:
        while not done.is_set():
            rss = sum(processes.rss_mb(pid) for pid in pids) * 2**20
            result.rss_peak = max(result.rss_peak, int(rss))
            await asyncio.sleep(0.1)

    done = asyncio.Event()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(n)]
        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        go.set()
        await asyncio.gather(*tasks)
        done.set()
        await watcher
    return result


def main() -> int:
    url, auth, n, delay, pids = sys.argv[1:6]
    body = {"model": "gpt-image-2", "prompt": "a lighthouse at dawn", "size": "1024x1024",
            "response_format": "b64_json"}
    result = asyncio.run(burst(url, auth, body, int(n), float(delay),
                               [int(p) for p in pids.split(",")]))
    print(result.line("burst"))
    print(f"p50 {statistics.median(result.added) if result.added else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
