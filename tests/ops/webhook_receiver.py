"""A webhook receiver on loopback for alert tests: real HTTP, answers with a scripted status."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.statuses: list[int] = []  # answered in order; 200 once exhausted
        self.lock = threading.Lock()
        self.url = ""

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.bodies)):
                    return
            time.sleep(0.02)
        raise AssertionError(f"webhook never saw the expected bodies; got {self.bodies}")


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            with rec.lock:
                status = rec.statuses.pop(0) if rec.statuses else 200
                if status == 200:
                    rec.bodies.append(body)
                    rec.paths.append(self.path)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
