"""Benchmark the model server against a naive one that calls `model.predict` per request.

Both run under the same gunicorn (one gthread worker, 8 threads) on 127.0.0.1 from the same model
directory, so the only difference is the inference path. Prints a table and writes
bench-results/serving.json.

    .venv/bin/python benchmarks/bench_serving.py [--model-dir models] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
EDGE = str(Path(sys.executable).with_name("edge"))
CONCURRENCY = (1, 8, 32)


# --- The naive server, as the original example served the model --------------------------------


def naive_app() -> Any:
    """Build the naive Flask app: load the .keras model, call `model.predict` on each request."""
    import keras
    from flask import Flask, g, jsonify, request

    model = keras.saving.load_model(Path(os.environ["NAIVE_MODEL_DIR"], "model.keras"))
    app = Flask("naive")

    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def timing(response: Any) -> Any:
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - g.started) * 1000:.3f}"
        return response

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
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(argv: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run a server process until the block ends; yield its URL once /health answers."""
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{argv[:4]} exited:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{argv[:4]} never became healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- Load -----------------------------------------------------------------------------------------


def load(url: str, body: bytes, concurrency: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """Send `body` from `concurrency` threads for `seconds` or `max_requests`; return the figures."""
    client_ms: list[float] = []
    server_ms: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    sent = 0

    def worker() -> None:
        nonlocal errors, sent
        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                if sent >= max_requests or time.perf_counter() > deadline:
                    return
                sent += 1
            started = time.perf_counter()
            try:
                response = session.post(url + "/predict", data=body, headers=headers, timeout=60)
                ok = response.status_code == 200
            except requests.RequestException:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if not ok:
                    errors += 1
                    continue
                client_ms.append(elapsed)
                timing = response.headers.get("Server-Timing", "")
                if "dur=" in timing:
                    server_ms.append(float(timing.split("dur=")[1]))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values else None

    return {
        "concurrency": concurrency,
        "requests": len(client_ms),
        "errors": errors,
        "seconds": round(wall, 2),
        "throughput_rps": round(len(client_ms) / wall, 1),
        "server_p50_ms": pct(server_ms, 50),
        "server_p99_ms": pct(server_ms, 99),
        "client_p50_ms": pct(client_ms, 50),
        "client_p99_ms": pct(client_ms, 99),
    }


def one_image() -> list[list[int]]:
    """A real Fashion-MNIST test image when the shared copy is here, else a synthetic one."""
    source = Path("/work/shared/data/fashion-mnist/t10k-images-idx3-ubyte.gz")
    if source.is_file():
        from edge.data import read_idx

        return read_idx(source)[0].astype(int).tolist()  # type: ignore[no-any-return]
    pixels = np.zeros((28, 28), dtype=int)
    pixels[6:22, 8:20] = 200
    return pixels.tolist()  # type: ignore[no-any-return]


def make_model(tmp: Path) -> Path:
    """Save an untrained model of the default architecture: the same arithmetic as a trained one."""
    from edge.data import CLASS_NAMES
    from edge.model import ModelParams, build_model, save_model

    folder = tmp / "models"
    save_model(
        build_model(ModelParams()),
        str(folder),
        {
            "name": "fashion-mnist",
            "version": "bench-untrained",
            "class_names": list(CLASS_NAMES),
            "lineage": {"note": "untrained weights, default architecture, for timing only"},
        },
    )
    return folder


def main() -> None:
    """Run both servers, load each at every concurrency, print and save the figures."""
    parser = argparse.ArgumentParser(description="Benchmark edge serve against a naive server.")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model directory [default: models/ if trained, else an untrained one]",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="time per concurrency level")
    parser.add_argument("--max-requests", type=int, default=3000, help="requests per level, at most")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "serving.json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = ROOT / "models" if (ROOT / "models" / "metadata.json").is_file() else make_model(tmp)
        body = json.dumps({"instances": [one_image()]}).encode()
        gunicorn_common = [
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
        contenders = {
            "edge serve (SavedModel serving function)": (
                [EDGE, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1"],
                {},
            ),
            "naive (model.predict per request)": (
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    *gunicorn_common,
                    "--chdir",
                    str(ROOT / "benchmarks"),
                    "bench_serving:naive_app()",
                ],
                {"NAIVE_MODEL_DIR": str(model_dir)},
            ),
        }
        results: dict[str, list[dict[str, Any]]] = {}
        for name, (argv, env) in contenders.items():
            port = free_port()
            argv = [*argv, "--port", str(port)] if argv[0] == EDGE else [*argv, "--bind", f"127.0.0.1:{port}"]
            with server(argv, port, env, tmp / f"{len(results)}.log") as url:
                load(url, body, 1, 3.0, 30)  # warm up
                results[name] = [load(url, body, c, args.seconds, args.max_requests) for c in CONCURRENCY]

    ours, naive = results.values()
    by_c = {r["concurrency"]: r for r in ours}
    naive_by_c = {r["concurrency"]: r for r in naive}
    summary = {
        "p50_ms_one_image_c1": by_c[1]["server_p50_ms"],
        "p99_ms_one_image_c1": by_c[1]["server_p99_ms"],
        "speedup_throughput_c8": round(
            by_c[8]["throughput_rps"] / max(naive_by_c[8]["throughput_rps"], 1e-9), 1
        ),
        "target_p50_le_5ms": (by_c[1]["server_p50_ms"] or 1e9) <= 5.0,
        "target_speedup_ge_10x": by_c[8]["throughput_rps"] >= 10 * naive_by_c[8]["throughput_rps"],
    }
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model_dir": str(model_dir),
        "seconds_per_level": args.seconds,
        "results": results,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    columns = ("req/s", "srv p50", "srv p99", "cli p50", "cli p99")
    header = f"{'server':44} {'conc':>4} " + " ".join(f"{c:>8}" for c in columns) + f" {'err':>4}"
    print(header)
    print("-" * len(header))
    for name, rows in results.items():
        for r in rows:
            values = (
                r["throughput_rps"],
                r["server_p50_ms"],
                r["server_p99_ms"],
                r["client_p50_ms"],
                r["client_p99_ms"],
            )
            print(
                f"{name:44} {r['concurrency']:>4} "
                + " ".join(f"{v!s:>8}" for v in values)
                + f" {r['errors']:>4}"
            )
    print(
        f"\none image, concurrency 1: server p50 {summary['p50_ms_one_image_c1']} ms, "
        f"p99 {summary['p99_ms_one_image_c1']} ms (target p50 <= 5 ms: "
        f"{'met' if summary['target_p50_le_5ms'] else 'MISSED'})"
    )
    print(
        f"throughput at concurrency 8: {summary['speedup_throughput_c8']}x the naive server "
        f"(target >= 10x: {'met' if summary['target_speedup_ge_10x'] else 'MISSED'})"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
