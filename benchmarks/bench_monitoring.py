"""Benchmark the prediction log's cost on serving: `edge serve` with the log off, and logging everything.

The same server, model and load (wrk) as benchmarks/bench_serving.py (one real test image per request),
run four times: EDGE_MONITOR_SAMPLE_RATE=0 (nothing enters the log's queue), then every
prediction logged to a local directory with the default share of embeddings
(EDGE_MONITOR_EMBED_RATE), with raw pixels too, and with an embedding for every prediction (what the
log cost before it sampled them). Prints a table and writes
bench-results/monitoring.json.

    .venv/bin/python benchmarks/bench_monitoring.py [--model-dir models] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import EDGE, WRK_SCRIPT, free_port, one_image, server, wrk  # noqa: E402

CONCURRENCY = (1, 8, 32)


def make_model(tmp: Path) -> Path:
    """Save an untrained model of the default architecture with a reference profile."""
    import numpy as np

    from edge.data import CLASS_NAMES, read_idx
    from edge.model import ModelParams, build_model, save_model
    from edge.monitoring.profile import PROFILE_FILE, compute_profile

    folder = tmp / "models"
    model = build_model(ModelParams())
    metadata = {"name": "fashion-mnist", "version": "bench-untrained", "class_names": list(CLASS_NAMES)}
    source = Path("/work/shared/data/fashion-mnist/t10k-images-idx3-ubyte.gz")
    images = (
        read_idx(source)[:1000]
        if source.is_file()
        else np.random.default_rng(0).uniform(0, 255, (1000, 28, 28))
    )
    profile = compute_profile(model, images, list(CLASS_NAMES))
    save_model(model, str(folder), metadata, extra_files={PROFILE_FILE: profile.to_json().encode()})
    return folder


def main() -> None:
    """Run the server under each log setting, load it at every concurrency, print and save the figures."""
    parser = argparse.ArgumentParser(description="Benchmark the prediction log's overhead on edge serve.")
    parser.add_argument("--model-dir", type=Path, default=None, help="[default: models/ if trained]")
    parser.add_argument("--seconds", type=float, default=8.0, help="time per concurrency level")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "monitoring.json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory(prefix="edge-bench-monitoring-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model_dir
        if model_dir is None:
            trained = (ROOT / "models" / "profile.json").is_file()
            model_dir = ROOT / "models" if trained else make_model(tmp)
        body_file = tmp / "body.json"
        body_file.write_text(json.dumps({"instances": [one_image()]}))
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT)
        settings = {
            "log off (sample rate 0)": {"EDGE_MONITOR_SAMPLE_RATE": "0"},
            "log every prediction": {"EDGE_MONITOR_LOG": str(tmp / "log"), "EDGE_MONITOR_SAMPLE_RATE": "1"},
            "log every prediction, raw pixels too": {
                "EDGE_MONITOR_LOG": str(tmp / "log-pixels"),
                "EDGE_MONITOR_SAMPLE_RATE": "1",
                "EDGE_MONITOR_LOG_INPUTS": "true",
            },
            "log every prediction, embed every one": {
                "EDGE_MONITOR_LOG": str(tmp / "log-embed-all"),
                "EDGE_MONITOR_SAMPLE_RATE": "1",
                "EDGE_MONITOR_EMBED_RATE": "1",
            },
        }
        results: dict[str, Any] = {}
        for index, (name, env) in enumerate(settings.items()):
            port = free_port()
            argv = [EDGE, "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            with server(argv, port, env, tmp / f"{index}.log"):
                wrk(url, body_file, script, 32, 3)  # warm up: TensorFlow's first calls are slow
                levels = [wrk(url, body_file, script, c, args.seconds) for c in CONCURRENCY]
                metrics = requests.get(url + "/metrics", timeout=10).text
            written = [
                line
                for line in metrics.splitlines()
                if line.startswith("edge_prediction_log_") and "_created" not in line
            ]
            results[name] = {"levels": levels, "log_counters": written}

    base = results["log off (sample rate 0)"]["levels"]
    print(f"\n{'setting':40} {'conc':>4} {'req/s':>8} {'vs off':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for name, result in results.items():
        for level, reference in zip(result["levels"], base, strict=True):
            ratio = (
                level["throughput_rps"] / reference["throughput_rps"] if reference["throughput_rps"] else 0
            )
            print(
                f"{name:40} {level['concurrency']:>4} {level['throughput_rps']:>8.1f} {ratio:>7.2f} "
                f"{level['p50_ms']!s:>7} {level['p99_ms']!s:>7}"
            )
    for name, result in results.items():
        print(f"{name}: " + "; ".join(result["log_counters"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
                "model_dir": str(model_dir),
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
