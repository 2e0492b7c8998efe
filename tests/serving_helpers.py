"""Run the model server's aiohttp app on a free port of 127.0.0.1 in a thread, for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from aiohttp import web


class Client:
    """Real HTTP to a running server, with the few calls the tests need."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        if "content_type" in kwargs:
            kwargs["headers"] = {"Content-Type": kwargs.pop("content_type")}
        return self.session.post(self.url + path, timeout=30, **kwargs)

    def open(self, path: str, method: str) -> requests.Response:
        return self.session.request(method, self.url + path, timeout=30)


@contextmanager
def serving(app: web.Application) -> Iterator[Client]:
    """Serve `app` until the block ends; yield a client of it."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    started = threading.Event()
    port: list[int] = []

    async def start() -> None:
        await runner.setup()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port.append(probe.getsockname()[1])
        site = web.TCPSite(runner, "127.0.0.1", port[0])
        await site.start()
        started.set()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="test-server", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the test server did not start")
    try:
        yield Client(f"http://127.0.0.1:{port[0]}")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def wait_until(condition: Any, timeout: float = 60.0) -> bool:
    """Poll `condition()` until it is true or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())
