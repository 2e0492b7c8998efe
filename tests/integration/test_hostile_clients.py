"""Both servers as real processes against hostile clients: slow headers never stall /health, and a
bounded fuzz of 10,000 malformed requests each ends with zero 5xx and the server alive."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fuzz import fuzz, model_server_request, webapp_request
from tests.live_servers import LiveServer, model_server, webapp

pytestmark = pytest.mark.slow

FUZZ_REQUESTS = 10_000
# Requests that announce more body than they send, or never end their headers, hold a connection
# until the servers' 2 s timeouts close it: 32 clients at once keep those waits from adding up.
FUZZ_CLIENTS = 32
SLOW_CLIENTS = 64
# A /health that queued behind the slow clients would wait for them to be cut (seconds at least, or
# forever while they trickle); one served by a free thread answers in milliseconds. The bound sits
# between the two with room for a busy two-core machine.
HEALTH_BOUND = 2.5


@pytest.fixture(scope="module")
def servers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, LiveServer]]:
    logs = tmp_path_factory.mktemp("hostile-logs")
    # A short body timeout, so fuzzed requests that announce more body than they send end quickly.
    env = {"EDGE_BODY_TIMEOUT": "2", "EDGE_RELOAD_INTERVAL": "0"}
    with (
        model_server(tiny_model_dir, logs / "model.log", env) as model,
        webapp(model.url, logs / "webapp.log", extra_args=["--channel-timeout", "2"]) as site,
    ):
        yield {"model server": model, "webapp": site}


def _port(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("which", ["model server", "webapp"])
def test_slow_header_clients_do_not_stall_health(servers: dict[str, LiveServer], which: str) -> None:
    server = servers[which]
    stop = threading.Event()
    sockets = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)

    def trickle() -> None:
        # One header line per connection every half second, never the blank line that ends them.
        while not stop.wait(0.5):
            for sock in sockets:
                # The server may have closed it: that is allowed.
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        waits = []
        for _ in range(5):
            started = time.monotonic()
            # A server whose threads the slow clients hold never answers: requests gives up at 10 s.
            response = requests.get(server.url + "/health", timeout=10)
            waits.append(time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            sock.close()
    summary = f"{which}: /health with {SLOW_CLIENTS} slow-header clients: {max(waits) * 1000:.0f} ms at most"
    print("\n" + summary)
    assert max(waits) < HEALTH_BOUND, summary


@pytest.mark.parametrize(
    ("which", "build"), [("model server", model_server_request), ("webapp", webapp_request)]
)
def test_fuzz_never_gets_a_server_error(servers: dict[str, LiveServer], which: str, build: object) -> None:
    server = servers[which]
    started = time.monotonic()
    report = fuzz(_port(server), build, FUZZ_REQUESTS, seed=11, workers=FUZZ_CLIENTS)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    summary = (
        f"{which}: {report.sent} malformed requests in {elapsed:.0f} s: {dict(report.statuses.most_common())}"
    )
    print("\n" + summary)
    assert report.sent == FUZZ_REQUESTS
    assert report.server_errors == [], summary + "\n" + "\n".join(repr(e) for e in report.server_errors[:10])
    assert server.process.poll() is None, "the server died"
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_webapp_closes_a_stalled_connection(servers: dict[str, LiveServer]) -> None:
    # Half a request, then silence: the 2 s channel timeout closes it, where a client would wait forever.
    with socket.create_connection(("127.0.0.1", _port(servers["webapp"])), timeout=15) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    # Closed, not answered: no thread ever saw the request.
    assert answer == b""


def test_webapp_refuses_an_absurd_body_before_reading_it(servers: dict[str, LiveServer]) -> None:
    with socket.create_connection(("127.0.0.1", _port(servers["webapp"])), timeout=15) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        first = sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 413"), first[:200]
