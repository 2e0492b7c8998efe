"""Start the model server and the webapp as real processes on 127.0.0.1, and stop them by PID."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

EDGE = str(Path(sys.executable).with_name("edge"))
# TensorFlow starts slowly on a busy two-core machine; edge serve loads the model twice.
START_TIMEOUT = 180.0


# A port handed to a server that binds it seconds later (TensorFlow loads first) must stay free
# meanwhile. Port 0's pick comes from the kernel's ephemeral range, where every outgoing connection
# also takes its local port (the fuzz tests open thousands) and where any other process's port 0
# lands: so the ports come from just below that range instead, each pytest-xdist worker from its
# own slice, in an order of its own, each port once before any again.
PORTS_PER_WORKER = 1000


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # not Linux: IANA's dynamic range, as macOS uses it


def _port_order() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw")) if worker.removeprefix("gw").isdigit() else 0
    first = _ephemeral_ports_start() - PORTS_PER_WORKER * (index + 1)
    if first < 1024:
        raise RuntimeError(f"no room for a port slice of pytest-xdist worker {worker}: use fewer workers")
    ports = list(range(first, first + PORTS_PER_WORKER))
    random.Random(os.getpid()).shuffle(ports)
    return itertools.cycle(ports)


_ports: Iterator[int] | None = None


def free_port() -> int:
    """Return a port of 127.0.0.1 that nothing is bound to right now, and that port 0 never gives."""
    global _ports
    if _ports is None:
        _ports = _port_order()
    for _ in range(PORTS_PER_WORKER):
        port = next(_ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken, or an earlier server's connections still linger there
            return port
    raise RuntimeError(f"all {PORTS_PER_WORKER} ports of this test process's slice are taken")


@dataclass
class LiveServer:
    """A started process and where it answers."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        """Return what the process printed so far."""
        return self.log.read_text(errors="replace")


def wait_until_ok(
    process: subprocess.Popen[bytes], url: str, log: Path, timeout: float = START_TIMEOUT
) -> None:
    """Return once `url` answers 200; raise RuntimeError with the log if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{output}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """Ask `process` to finish (SIGTERM), and kill it after `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def running(
    argv: list[str], url: str, log: Path, env: Mapping[str, str], health_path: str = "/health"
) -> Iterator[LiveServer]:
    """Run `argv` until the block ends, once `url + health_path` answers 200."""
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **env})
    server = LiveServer(process, url, log)
    try:
        wait_until_ok(process, url + health_path, log)
        yield server
    finally:
        stop(process)  # both servers finish their requests and exit on SIGTERM


@contextmanager
def model_server(
    model_dir: Path | str,
    log: Path,
    extra_env: Mapping[str, str] | None = None,
    health_path: str = "/health",
    port: int | None = None,
) -> Iterator[LiveServer]:
    """Run `edge serve` on a free port of 127.0.0.1 (or on AIP_HTTP_PORT when given in env)."""
    env = dict(extra_env or {})
    argv = [EDGE, "serve", "--host", "127.0.0.1"]
    if "AIP_STORAGE_URI" not in env:
        argv += ["--model-dir", str(model_dir)]
    if "AIP_HTTP_PORT" in env:
        port = int(env["AIP_HTTP_PORT"])
    else:
        port = port or free_port()
        argv += ["--port", str(port)]
    with running(argv, f"http://127.0.0.1:{port}", log, env, health_path) as server:
        yield server


@contextmanager
def webapp(
    model_url: str, log: Path, extra_env: Mapping[str, str] | None = None, extra_args: Sequence[str] = ()
) -> Iterator[LiveServer]:
    """Run the webapp as its image does (`python -m edge_webapp`) on a free port of 127.0.0.1."""
    port = free_port()
    argv = [sys.executable, "-m", "edge_webapp", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    env = {"MODEL_URL": model_url, "MODEL_RETRIES": "1", **(extra_env or {})}
    with running(argv, f"http://127.0.0.1:{port}", log, env) as server:
        yield server
