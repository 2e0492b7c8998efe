"""The model server under concurrency and hostile clients, over real HTTP on 127.0.0.1: batching gives
each caller its own answer, a full queue sheds with 503, slow or idle connections stall nobody."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edge.serving.app import BATCHER, create_app
from edge.serving.loaded_model import Predictor, load_from_uri
from edge.serving.settings import ServerSettings
from tests.serving_helpers import Client, serving, wait_until


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> Predictor:
    return load_from_uri(str(tiny_model_dir))


def slowed(predictor: Predictor, seconds: float, gate: threading.Event | None = None) -> Predictor:
    """The same model, each call taking at least `seconds` (or waiting for `gate`): batches form."""

    def serve(batch: np.ndarray) -> np.ndarray:
        if gate is not None:
            gate.wait(30)
        time.sleep(seconds)
        return predictor.serve(batch)

    return Predictor(serve, predictor.metadata)


def image(seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((28, 28), dtype=np.int64)
    pixels[4:24, 6:22] = rng.integers(0, 256, size=(20, 16))
    return pixels.tolist()  # type: ignore[no-any-return]


def batch_sizes(client: Client) -> list[tuple[float, float]]:
    """The (upper bound, cumulative count) pairs of the batch-size histogram."""
    rows = []
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("edge_batch_size_bucket{"):
            bound = line.split('le="')[1].split('"')[0]
            rows.append((float(bound), float(line.rsplit(" ", 1)[1])))
    return rows


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(predictor: Predictor) -> None:
    # 48 callers at once: valid requests of 1-3 images, each with different pixels, mixed with
    # invalid ones. A batch must never hand one caller another's rows, and a bad request must
    # never fail the good ones batched with it.
    settings = ServerSettings(max_batch=16, batch_wait_ms=5, reload_interval=0)
    bodies: list[dict[str, Any]] = []
    for i in range(48):
        if i % 8 == 3:
            bodies.append({"instances": [image(i), [[0] * 27] * 28]})  # wrong shape
        elif i % 8 == 7:
            bodies.append({"instances": [image(i), [["x"] * 28] * 28]})  # strings
        else:
            bodies.append({"instances": [image(i * 10 + k) for k in range(1 + i % 3)]})

    with serving(create_app(settings, predictor=slowed(predictor, 0.03))) as client:
        with ThreadPoolExecutor(max_workers=48) as pool:
            url = client.url + "/predict"
            answers = list(pool.map(lambda body: requests.post(url, json=body, timeout=60), bodies))
        sizes = batch_sizes(client)

    # Every valid image any caller sent, each served alone, by (caller, instance): a served row
    # must be nearest to its own.
    everyone = {
        (i, k): predictor.serve(np.asarray([instance], dtype=np.float32))[0]
        for i, body in enumerate(bodies)
        if i % 4 != 3
        for k, instance in enumerate(body["instances"])
    }
    for i, (body, answer) in enumerate(zip(bodies, answers, strict=True)):
        if i % 4 == 3:
            assert answer.status_code == 400, answer.text
            assert answer.json()["instance"] == 1
            assert answer.json()["error"].startswith("instances[1]: ")
            continue
        assert answer.status_code == 200, answer.text
        expected = [everyone[(i, k)] for k in range(len(body["instances"]))]
        served = [
            [p["probabilities"][n] for n in predictor.class_names] for p in answer.json()["predictions"]
        ]
        # Its own rows: float32 sums run in an order that depends on the batch's size, so a row
        # served in a batch of 16 differs from the same image served alone by up to a few 1e-5;
        # another caller's image differs by far more, which the nearest-row check pins down.
        np.testing.assert_allclose(served, expected, atol=1e-4)
        for k, row in enumerate(served):
            nearest = min(everyone, key=lambda key: float(np.abs(np.asarray(row) - everyone[key]).max()))
            assert nearest == (i, k), f"caller {i}'s row {k} is nearest to caller {nearest[0]}'s"
    # Some calls of the model served more than one image: requests were grouped.
    at_most_one = dict(sizes)[1.0]
    total = dict(sizes)[float("inf")]
    assert total > at_most_one, sizes
    # ... and none exceeded max_batch (a histogram bucket of 16 holds them all).
    assert dict(sizes)[16.0] == total


def test_batches_compute_at_once_on_each_inference_thread(predictor: Predictor) -> None:
    # Each call waits at a barrier for a second call: both requests are answered only if two
    # batches run at the same time (with one inference thread the barrier breaks: 500s).
    both = threading.Barrier(2, timeout=20)

    def serve(batch: np.ndarray) -> np.ndarray:
        both.wait()
        return predictor.serve(batch)

    settings = ServerSettings(max_batch=1, batch_wait_ms=0, inference_threads=2, reload_interval=0)
    with (
        serving(create_app(settings, predictor=Predictor(serve, predictor.metadata))) as client,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        url = client.url + "/predict"
        answers = list(
            pool.map(lambda i: requests.post(url, json={"instances": [image(i)]}, timeout=60), [1, 2])
        )
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    for i, answer in zip([1, 2], answers, strict=True):
        expected = predictor.serve(np.asarray([image(i)], dtype=np.float32))[0]
        served = [answer.json()["predictions"][0]["probabilities"][n] for n in predictor.class_names]
        np.testing.assert_allclose(served, expected, atol=1e-5)


def test_a_full_queue_sheds_with_503_and_retry_after(predictor: Predictor) -> None:
    gate = threading.Event()
    settings = ServerSettings(
        max_batch=1, max_queue=3, batch_wait_ms=0, inference_threads=1, reload_interval=0
    )
    app = create_app(settings, predictor=slowed(predictor, 0, gate))
    with serving(app) as client, ThreadPoolExecutor(max_workers=4) as pool:
        body = {"instances": [image(1)]}
        # One request is computing (held at the gate), three wait in the queue: it is full.
        first = pool.submit(client.post, "/predict", json=body)
        assert wait_until(lambda: app[BATCHER].queued == 0 and _computing(client))
        waiting = [pool.submit(client.post, "/predict", json=body) for _ in range(3)]
        assert wait_until(lambda: app[BATCHER].queued == 3)
        shed = client.post("/predict", json=body)
        assert shed.status_code == 503
        assert shed.headers["Retry-After"] == "1"
        assert "busy" in shed.json()["error"]
        # Health is not queued behind the model.
        assert client.get("/health").status_code == 200
        gate.set()
        assert [f.result().status_code for f in [first, *waiting]] == [200, 200, 200, 200]
        assert "edge_requests_shed_total 1.0" in client.get("/metrics").text


def _computing(client: Client) -> bool:
    # The request in flight has left the queue once the queue is empty and nothing was answered yet.
    return 'edge_http_requests_total{method="POST"' not in client.get("/metrics").text


@pytest.fixture
def guarded(predictor: Predictor) -> Iterator[Client]:
    settings = ServerSettings(header_timeout=1.0, body_timeout=1.0, reload_interval=0)
    with serving(create_app(settings, predictor=predictor)) as client:
        yield client


def _open_slow(url: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        sockets.append(sock)
    return sockets


def test_slow_header_clients_neither_stall_health_nor_stay_connected(guarded: Client) -> None:
    sockets = _open_slow(guarded.url, 64)
    try:
        # Each keeps trickling a header line, as a slowloris client does.
        for sock in sockets:
            sock.sendall(b"X-Slow: 1\r\n")
        health = requests.get(guarded.url + "/health", timeout=5)
        assert health.status_code == 200
        answer = requests.post(guarded.url + "/predict", json={"instances": [image(3)]}, timeout=5)
        assert answer.status_code == 200
        # After the header timeout (1 s here) the server has closed every one of them.
        time.sleep(1.5)
        closed = 0
        for sock in sockets:
            sock.settimeout(5)
            try:
                closed += sock.recv(1024) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == len(sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_a_body_that_never_arrives_is_408_and_closed(guarded: Client) -> None:
    (sock,) = _open_slow(guarded.url, 1)
    try:
        sock.sendall(b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        sock.settimeout(10)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    finally:
        sock.close()


def test_a_chunked_body_over_the_limit_is_413(predictor: Predictor) -> None:
    settings = ServerSettings(max_request_bytes=10_000, reload_interval=0)
    with serving(create_app(settings, predictor=predictor)) as client:

        def chunks() -> Iterator[bytes]:
            yield b'{"instances": [['
            for _ in range(100):
                yield b"0, " * 100

        response = client.post("/predict", data=chunks(), content_type="application/json")
        assert response.status_code == 413
        assert "10000 bytes" in response.json()["error"]
        assert client.post("/predict", json={"instances": [image(0)]}).status_code == 200
