"""A bounded, seeded fuzzer of malformed HTTP requests, sent over raw sockets to 127.0.0.1.

Each request is built as bytes (so the request line, headers and framing can be broken too, which
an HTTP library would refuse to send), on a connection of its own that asks to be closed. The
fuzzer records every status; a request the server drops without answering counts as "no answer".
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

Build = Callable[[random.Random], bytes]


def _request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    fields = {"Content-Length": str(len(body)), **(headers or {})}
    lines += [f"{k}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, drop, insert or truncate a few bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        kind = rng.random()
        position = rng.randrange(len(out))
        if kind < 0.4:
            out[position] = rng.randrange(256)
        elif kind < 0.6:
            del out[position]
        elif kind < 0.8:
            out[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            del out[position:]
    return bytes(out)


def _image(rng: random.Random, fmt: str, size: int = 28) -> bytes:
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[size // 5 : size - size // 5, size // 4 : size - size // 4] = rng.randrange(60, 256)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


_JUNK_VALUES: list[object] = [
    None,
    True,
    "",
    "0",
    -1,
    256,
    1e309,
    10**40,
    [],
    {},
    [[]],
    [None] * 784,
    ["1"] * 784,
    [0] * 783,
    [[0] * 28] * 27,
    {"b64": 5},
    {"b64": "@@@"},
    {"b64": ""},
    {"b64": "AAAA", "x": 1},
]


def _broken_http(rng: random.Random) -> bytes:
    choices: list[bytes] = [
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))),
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n"
        b"Connection: close\r\n\r\n12345",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        b"GET /" + b"a" * rng.randint(5000, 20000) + b" HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"b" * rng.randint(9000, 20000) + b"\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * rng.randint(200, 400) + b"Connection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\nConnection: close\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\nConnection: close\n\n",
        b"GET http://elsewhere.example/ HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n"
        b"Connection: close\r\n\r\n",
    ]
    return _mutate(rng.choice(choices), rng) if rng.random() < 0.3 else rng.choice(choices)


# --- The model server ------------------------------------------------------------------------------


def _model_body(rng: random.Random) -> bytes:
    kind = rng.random()
    good = {"instances": [[rng.randrange(256) for _ in range(784)]]}
    if kind < 0.25:
        return _mutate(json.dumps(good).encode(), rng)
    if kind < 0.45:
        instances = [rng.choice(_JUNK_VALUES) for _ in range(rng.randint(1, 4))]
        return json.dumps({"instances": instances}).encode()
    if kind < 0.6:
        png = _mutate(_image(rng, rng.choice(["PNG", "JPEG"])), rng)
        text = base64.b64encode(png).decode()
        return json.dumps({"instances": [{"b64": text}]}).encode()
    if kind < 0.7:
        depth = rng.randint(1, 50_000)
        return b"[" * depth + b"]" * rng.randint(0, depth)
    if kind < 0.8:
        return json.dumps(rng.choice([*_JUNK_VALUES, {"inputs": []}, {"instances": 3}])).encode()
    if kind < 0.9:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    return json.dumps({"instances": [[0] * 784] * rng.randint(65, 80)}).encode()


def model_server_request(rng: random.Random) -> bytes:
    """One malformed request for the model server."""
    kind = rng.random()
    if kind < 0.15:
        return _broken_http(rng)
    if kind < 0.25:
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST", "BREW"])
        path = rng.choice(
            [
                "/predict",
                "/health",
                "/v1/models/x:predict",
                "/v1/models/fashion-mnist:explain",
                "/metrics/../../etc/passwd",
                "/%00",
                "/v1/models/",
                "/openapi.json?x=" + "%" * 30,
            ]
        )
        return _request(method, path)
    content_type = rng.choice(
        ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "a/b"]
    )
    path = rng.choice(
        ["/predict", "/predict", "/v1/models/fashion-mnist:predict", "/v1/models/other:predict"]
    )
    headers = {"Content-Type": content_type} if content_type else {}
    return _request("POST", path, _model_body(rng), headers)


# --- The webapp ------------------------------------------------------------------------------------


def _multipart(
    field_name: str, filename: str, data: bytes, boundary: str = "fuzzboundary"
) -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def webapp_request(rng: random.Random) -> bytes:
    """One malformed request for the webapp."""
    kind = rng.random()
    if kind < 0.15:
        return _broken_http(rng)
    if kind < 0.25:
        method = rng.choice(["GET", "PUT", "DELETE", "PATCH", "POST", "BREW"])
        path = rng.choice(
            [
                "/",
                "/api/predict",
                "/health",
                "/static/../../etc/passwd",
                "/static/%00",
                "/nowhere",
                "/?sample=" + "x" * 100,
            ]
        )
        return _request(method, path)
    image = _image(rng, rng.choice(["PNG", "JPEG", "WEBP"]), rng.choice([28, 64, 200]))
    data = _mutate(image, rng) if rng.random() < 0.85 else bytes(rng.randrange(256) for _ in range(300))
    if kind < 0.55:
        body, content_type = _multipart("image", "upload.png", data)
        if rng.random() < 0.3:
            body = _mutate(body, rng)
        return _request("POST", rng.choice(["/api/predict", "/"]), body, {"Content-Type": content_type})
    if kind < 0.8:
        content_type = rng.choice(["image/png", "image/jpeg", "application/octet-stream", "image/x-junk"])
        return _request("POST", "/api/predict", data, {"Content-Type": content_type})
    form = rng.choice([b"sample=nope", b"sample=", b"sample=%ff%fe", b"&&&==", b"sample=" + b"a" * 5000])
    return _request("POST", "/", form, {"Content-Type": "application/x-www-form-urlencoded"})


# --- Sending ---------------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """What the server answered to the fuzz."""

    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())


def _send(port: int, raw: bytes, timeout: float) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            # The server may refuse and close before reading everything: read its answer anyway.
            with contextlib.suppress(OSError):
                sock.sendall(raw)
            first = b""
            while b"\r\n" not in first:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                first += chunk
    except TimeoutError:
        return "timeout"
    except OSError:
        return "reset"
    if not first.startswith(b"HTTP/"):
        return "no answer"
    return first.split(b" ", 2)[1].decode("latin-1", "replace")


def _unknown_coding_refused(status: str, raw: bytes) -> bool:
    """Whether this is a 501 to a transfer coding other than chunked, as RFC 9112 (6.1) asks of a server."""
    if status != "501":
        return False
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    codings = [
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
        if line.startswith(b"transfer-encoding:")
    ]
    return any(coding != b"chunked" for coding in codings)


def fuzz(
    port: int, build: Build, count: int, *, seed: int, workers: int = 8, timeout: float = 20.0
) -> FuzzReport:
    """Send `count` requests made by `build` (seeded) from `workers` threads; return the statuses."""
    rng = random.Random(seed)
    requests_ = [build(rng) for _ in range(count)]
    report = FuzzReport()
    lock = threading.Lock()
    position = iter(range(count))

    def next_index() -> Iterator[int]:
        while True:
            with lock:
                index = next(position, None)
            if index is None:
                return
            yield index

    def worker() -> None:
        for index in next_index():
            status = _send(port, requests_[index], timeout)
            with lock:
                report.statuses[status] += 1
                failed = status.startswith("5") and not _unknown_coding_refused(status, requests_[index])
                if failed or status == "timeout":
                    report.server_errors.append((status, requests_[index][:300]))

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return report
