"""Benchmark `edge serve` against the server it replaced and a naive `model.predict` server, with wrk.

Three servers, one at a time, on 127.0.0.1 from the same model directory, one image per request:

- `edge serve`: this checkout's server (asyncio, micro-batching);
- the previous server: `edge serve` as of commit PREVIOUS_SERVER_COMMIT (Flask under one gunicorn
  gthread worker with 8 threads, one TensorFlow call per request), run from `git archive` of that
  commit into a temporary folder, so its code is exactly what shipped;
- naive: Flask under the same gunicorn settings, `model.predict` on each request.

Load comes from Debian's `wrk` (C, a few percent of a core), at concurrency 1 and 32. Then, for
`edge serve` alone, a 60 s run at concurrency 32 with its resident memory sampled; and for each
server, /health timed while 64 connections send their headers slowly. Prints a table and writes
bench-results/serving.json.

    .venv/bin/python benchmarks/bench_serving.py [--model-dir models] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
EDGE = str(Path(sys.executable).with_name("edge"))
# The last commit of the Flask + gunicorn server, before the asyncio one replaced it.
PREVIOUS_SERVER_COMMIT = "2c95492"
GUNICORN_GTHREAD = [
    "--worker-class",
    "gthread",
    "--workers",
    "1",
    "--threads",
    "8",
    "--no-control-socket",
    "--access-logfile",
    "/dev/null",
]
SLOW_CLIENTS = 64
WRK_SCRIPT = """
local f = io.open(os.getenv("BENCH_BODY"), "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
"""


# --- The naive server, as the original example served the model --------------------------------


def naive_app() -> Any:
    """Build the naive Flask app: load the .keras model, call `model.predict` on each request."""
    import keras
    from flask import Flask, jsonify, request

    model = keras.saving.load_model(Path(os.environ["NAIVE_MODEL_DIR"], "model.keras"))
    app = Flask("naive")

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="ok")

    @app.post("/predict")
    def predict() -> Any:
        batch = np.asarray(request.get_json()["instances"], dtype="float32")
        probabilities = model.predict(batch, verbose=0)
        return jsonify(
            predictions=[{"class_id": int(p.argmax()), "confidence": float(p.max())} for p in probabilities]
        )

    return app


# --- Starting and stopping servers ----------------------------------------------------------------


def free_port() -> int:
    """Return a free port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(argv: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; yield it once /health answers."""
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{argv[:4]} exited:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{argv[:4]} never became healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def previous_server_source(tmp: Path) -> Path:
    """Extract src/ of PREVIOUS_SERVER_COMMIT into `tmp`; return the folder to put on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_SERVER_COMMIT, "src"],
        capture_output=True,
        check=True,
    ).stdout
    target = tmp / "previous"
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


# --- Measuring ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk(url: str, body_file: Path, script: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """Run wrk at `concurrency` for `seconds`; return requests/s, latency percentiles and errors."""
    threads = min(2, concurrency)
    result = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{seconds:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url + "/predict",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body_file)},
        check=True,
    )
    out = result.stdout
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "throughput_rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": percentiles.get(50),
        "p90_ms": percentiles.get(90),
        "p99_ms": percentiles.get(99),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0),
    }


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn's worker)."""
    total = rss_mib(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += rss_mib(int(child))
    return total


def soak(url: str, body_file: Path, script: Path, pid: int, seconds: float) -> dict[str, Any]:
    """wrk at concurrency 32 for `seconds` while sampling the server's RSS every second."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append(tree_rss_mib(pid))

    before = tree_rss_mib(pid)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        load = wrk(url, body_file, script, 32, seconds)
    finally:
        stop.set()
        sampler.join()
    after = tree_rss_mib(pid)
    # Growth from the first seconds of load (buffers and batches allocated) to the end.
    start = samples[min(5, len(samples) - 1)]
    return {
        **load,
        "rss_before_mib": round(before, 1),
        "rss_after_5s_mib": round(start, 1),
        "rss_end_mib": round(after, 1),
        "rss_max_mib": round(max(samples), 1),
        "rss_growth_pct": round((after - start) / start * 100, 2),
    }


def health_under_slow_headers(url: str, port: int) -> dict[str, Any]:
    """Time /health while SLOW_CLIENTS connections trickle header lines and never finish them."""
    sockets = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for sock in sockets:
                with suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")

    thread = threading.Thread(target=trickle)
    thread.start()
    waits: list[float | None] = []
    try:
        time.sleep(1.0)
        for _ in range(3):
            started = time.monotonic()
            try:
                ok = requests.get(url + "/health", timeout=20).status_code == 200
                waits.append(time.monotonic() - started if ok else None)
            except requests.RequestException:
                waits.append(None)  # no answer within 20 s
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            sock.close()
    answered = [w for w in waits if w is not None]
    return {
        "slow_clients": SLOW_CLIENTS,
        "health_answered": f"{len(answered)}/{len(waits)}",
        "health_max_ms": round(max(answered) * 1000, 1) if answered else None,
    }


# --- The run --------------------------------------------------------------------------------------


def one_image() -> list[list[int]]:
    """A real Fashion-MNIST test image when the shared copy is here, else a synthetic one."""
    for folder in (Path("/work/shared/data/fashion-mnist"), Path("/usr/share/datasets/fashion-mnist")):
        source = folder / "t10k-images-idx3-ubyte.gz"
        if source.is_file():
            from edge.data import read_idx

            return read_idx(source)[0].astype(int).tolist()  # type: ignore[no-any-return]
    pixels = np.zeros((28, 28), dtype=int)
    pixels[6:22, 8:20] = 200
    return pixels.tolist()  # type: ignore[no-any-return]


def make_model(tmp: Path) -> Path:
    """Save an untrained model of the shipped architecture (params.yaml's, flip averaging included):
    the same arithmetic per image as a trained one."""
    from edge.data import CLASS_NAMES
    from edge.model import build_model, save_model, with_flip_tta
    from edge.pipeline import load_params

    params = load_params(ROOT / "params.yaml").train.model
    model = build_model(params)
    folder = tmp / "models"
    save_model(
        with_flip_tta(model) if params.tta_flip else model,
        str(folder),
        {
            "name": "fashion-mnist",
            "version": "bench-untrained",
            "class_names": list(CLASS_NAMES),
            "lineage": {"note": "untrained weights, shipped architecture, for timing only"},
        },
    )
    return folder


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    """Run every server, load each with wrk, print and save the figures."""
    parser = argparse.ArgumentParser(description="Benchmark edge serve with wrk.")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model directory [default: models/ if trained, else an untrained default-architecture one]",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk time per concurrency level")
    parser.add_argument("--soak-seconds", type=float, default=60.0, help="the RSS run at concurrency 32")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "serving.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # Absolute: the previous server and the naive one run from other folders.
        model_dir = args.model_dir.resolve() if args.model_dir else None
        if model_dir is None:
            model_dir = ROOT / "models" if (ROOT / "models" / "metadata.json").is_file() else make_model(tmp)
        metadata = json.loads((model_dir / "metadata.json").read_text())
        body_file = tmp / "one-image.json"
        body_file.write_text(json.dumps({"instances": [one_image()]}))
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        previous_src = previous_server_source(tmp)
        contenders: dict[str, tuple[list[str], dict[str, str]]] = {
            "edge serve (asyncio, batching)": (
                [EDGE, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port"],
                {"EDGE_RELOAD_INTERVAL": "0"},
            ),
            f"previous edge serve ({PREVIOUS_SERVER_COMMIT}, gunicorn)": (
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    *GUNICORN_GTHREAD,
                    "edge.serving.app:create_app({'EXIT_ON_LOAD_ERROR': True})",
                    "--bind",
                ],
                {"PYTHONPATH": str(previous_src), "EDGE_MODEL_DIR": str(model_dir)},
            ),
            "naive model.predict (gunicorn)": (
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    *GUNICORN_GTHREAD,
                    "--chdir",
                    str(ROOT / "benchmarks"),
                    "bench_serving:naive_app()",
                    "--bind",
                ],
                {"NAIVE_MODEL_DIR": str(model_dir)},
            ),
        }
        results: dict[str, dict[str, Any]] = {}
        for index, (name, (argv, env)) in enumerate(contenders.items()):
            port = free_port()
            bind = str(port) if argv[0] == EDGE else f"127.0.0.1:{port}"
            url = f"http://127.0.0.1:{port}"
            print(f"{name}: starting", file=sys.stderr, flush=True)
            with server([*argv, bind], port, env, tmp / f"{index}.log") as process:
                wrk(url, body_file, script, 32, 3)  # warm up: TensorFlow's first calls are slow
                rows = [wrk(url, body_file, script, c, args.seconds) for c in (1, 32)]
                entry: dict[str, Any] = {"runs": rows}
                if index == 0:
                    print(f"{name}: {args.soak_seconds:g} s at concurrency 32", file=sys.stderr, flush=True)
                    entry["soak"] = soak(url, body_file, script, process.pid, args.soak_seconds)
                entry["slow_headers"] = health_under_slow_headers(url, port)
                results[name] = entry
            print(f"{name}: done", file=sys.stderr, flush=True)
    load_after = load_average()

    ours = next(iter(results.values()))
    c1, c32 = ours["runs"]
    soak_run = ours["soak"]
    summary = {
        "c32_rps": c32["throughput_rps"],
        "target_c32_ge_1000_rps": c32["throughput_rps"] >= 1000,
        "c1_p50_ms": c1["p50_ms"],
        "target_c1_p50_le_5ms": (c1["p50_ms"] or 1e9) <= 5,
        "c32_p99_ms": c32["p99_ms"],
        "rss_growth_pct_60s_c32": soak_run["rss_growth_pct"],
        "target_rss_growth_lt_10pct": soak_run["rss_growth_pct"] < 10,
        "health_ms_with_64_slow_clients": ours["slow_headers"]["health_max_ms"],
        "target_health_lt_1s": (ours["slow_headers"]["health_max_ms"] or 1e9) < 1000,
    }
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "model_dir": str(model_dir),
        "model_version": metadata.get("version"),
        "load_generator": "wrk, one image per request (a real Fashion-MNIST test image as 28x28 numbers)",
        "results": results,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results, summary, report)


def print_table(results: dict[str, dict[str, Any]], summary: dict[str, Any], report: dict[str, Any]) -> None:
    """Print the figures side by side, then the targets."""
    header = f"{'server':44} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for name, entry in results.items():
        for r in entry["runs"]:
            print(
                f"{name:44} {r['concurrency']:>4} {r['throughput_rps']:>8.1f} {r['p50_ms']!s:>8} "
                f"{r['p90_ms']!s:>8} {r['p99_ms']!s:>8} {r['errors']:>6}"
            )
    print()
    for name, entry in results.items():
        slow = entry["slow_headers"]
        print(
            f"{name:44} /health with {slow['slow_clients']} slow-header clients: answered "
            f"{slow['health_answered']}, slowest {slow['health_max_ms']} ms"
        )
    soak_run = next(iter(results.values()))["soak"]
    print(
        f"\nedge serve, {soak_run['seconds']:g} s at concurrency 32: {soak_run['throughput_rps']} req/s, "
        f"p99 {soak_run['p99_ms']} ms, {soak_run['errors']} errors, RSS {soak_run['rss_after_5s_mib']} -> "
        f"{soak_run['rss_end_mib']} MiB ({soak_run['rss_growth_pct']:+.2f}%)"
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(
        f"\ntargets: >= 1,000 req/s at c32: {summary['c32_rps']} "
        f"({verdict(summary['target_c32_ge_1000_rps'])}); "
        f"p50 <= 5 ms at c1: {summary['c1_p50_ms']} ms ({verdict(summary['target_c1_p50_le_5ms'])}); "
        f"p99 at c32: {summary['c32_p99_ms']} ms; RSS growth < 10%: {summary['rss_growth_pct_60s_c32']}% "
        f"({verdict(summary['target_rss_growth_lt_10pct'])}); /health < 1 s with 64 slow clients: "
        f"{summary['health_ms_with_64_slow_clients']} ms ({verdict(summary['target_health_lt_1s'])})"
    )
    machine = report["machine"]
    print(
        f"model {report['model_version']} from {report['model_dir']}; {machine['cpus']} CPUs; load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after"
    )


if __name__ == "__main__":
    main()
