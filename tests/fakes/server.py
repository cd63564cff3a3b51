"""A small real HTTP server on 127.0.0.1 for standing in for a provider in tests.

Each fake subclass answers routes the way the real API does; a test can queue scripted
replies per route (errors, delays, hangs, garbage, resets) and read back every request it
received. A hanging reply waits until the client goes away and records that it did, so a
test can see cancellation reach the provider.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import json
import select
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A scripted answer: a status and JSON (or raw) body, or a way of failing."""

    status: int = 200
    json: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False  # never answer; wait for the client to hang up
    reset: bool = False  # drop the connection without an answer
    as_usual: bool = False  # the fake's usual answer (after `delay`)
    events: list[bytes] | None = None  # a streamed body (chunked), one chunk per event...
    event_delay: float = 0.0  # ...this long apart


@dataclass
class Received:
    """A request as the fake saw it."""

    method: str
    path: str
    route: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)


class FakeServer:
    """Subclasses implement `route(method, path)` and `answer(route, request)`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.disconnects: list[str] = []
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def script(self, route: str, *replies: Reply) -> None:
        """Answer the next requests to `route` with `replies`, in order."""
        with self._lock:
            self._scripts[route].extend(replies)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.disconnects.clear()
            self._scripts.clear()

    def requests_to(self, route: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.route == route]

    def wait_for_disconnect(self, route: str, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if route in self.disconnects:
                return True
            time.sleep(0.05)
        return False

    # For subclasses.
    def route(self, method: str, path: str) -> str | None:
        raise NotImplementedError

    def answer(self, route: str, request: Received) -> Reply:
        raise NotImplementedError

    def _next_reply(self, route: str, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            queue = self._scripts.get(route)
            scripted = queue.popleft() if queue else None
        if scripted is not None and scripted.as_usual:
            return dataclasses.replace(self.answer(route, request), delay=scripted.delay)
        return scripted or self.answer(route, request)


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            route = fake.route(self.command, self.path)
            if route is None:
                self._send(Reply(404, {"error": {"message": f"no route {self.path}"}}))
                return
            request = Received(self.command, self.path, route,
                               {k.lower(): v for k, v in self.headers.items()}, body)
            _parse_body(request)
            reply = fake._next_reply(route, request)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.hang:
                self._wait_for_hangup(route)
                return
            if reply.reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                return
            self._send(reply)

        def _wait_for_hangup(self, route: str, limit: float = 120) -> None:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], 0.1)
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    with fake._lock:
                        fake.disconnects.append(route)
                    break
            self.close_connection = True

        def _send(self, reply: Reply) -> None:
            if reply.events is not None:
                self._send_events(reply)
                return
            data = reply.raw if reply.raw is not None else json.dumps(reply.json).encode()
            self.send_response(reply.status)
            headers = {"content-type": "application/json", **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send_events(self, reply: Reply) -> None:
            """A chunked body, one chunk per event, flushed as it goes (Server-Sent Events)."""
            self.send_response(reply.status)
            for name, value in {"content-type": "text/event-stream", **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            try:
                for index, event in enumerate(reply.events or ()):
                    if index and reply.event_delay:
                        time.sleep(reply.event_delay)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


def _parse_body(request: Received) -> None:
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json") and request.body:
        request.json = json.loads(request.body)
    elif kind.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"content-type: {kind}\r\n\r\n".encode() + request.body)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True) or b""
            if filename is not None:
                request.files.setdefault(name, []).append(
                    (filename, part.get_content_type(), payload))
            else:
                request.fields.setdefault(name, []).append(payload.decode())
