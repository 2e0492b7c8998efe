"""Benchmark the training pipeline on the real data against its quality targets.

In a fresh clone of the repository at HEAD (so uncommitted edits do not leak in), seed Fashion-MNIST
from a local folder, run `dvc repro` with the default params.yaml and time each stage, time a second
`dvc repro` (it must do nothing), read the test accuracy, and run the original example's baseline, a
k=3 nearest-neighbour classifier on raw pixels. Prints a table against the targets and writes
bench-results/pipeline.json.

    EDGE_DATA_SOURCE=/path/to/fashion-mnist python benchmarks/bench_pipeline.py
    python benchmarks/bench_pipeline.py --source /path/to/fashion-mnist --keep
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Issue 12 asks for a median of 93.5% over 3 seeds; this benchmark runs one seed, the default.
TARGET_ACCURACY = 0.935
TARGET_PIPELINE_SECONDS = 360.0
TARGET_NOOP_SECONDS = 3.0
KNN_K = 3
STAGES = ("prepare", "train", "evaluate")
# Nothing we run phones home.
QUIET_ENV = {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _env() -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV}
    # `edge` in dvc.yaml's commands must be the one installed beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return done


def clone(repo: Path, into: Path, source: str) -> Path:
    """Clone `repo` at HEAD into `into`, seed the raw data there and make sure DVC is initialised."""
    work = into / "repo"
    _run(["git", "clone", "--quiet", "--no-hardlinks", str(repo), str(work)], cwd=into)
    if not (work / ".dvc").is_dir():
        _run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=work)
    seed = "from pathlib import Path; from edge import data; data.seed(Path({!r}), source={!r})"
    _run([sys.executable, "-c", seed.format("data/raw/fashion-mnist", source)], cwd=work)
    return work


def timed_repro(work: Path) -> tuple[float, dict[str, float], str]:
    """Run `dvc repro`, timing it whole and each stage from when DVC announces it to the next."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=work,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    marks: list[tuple[str, float]] = []
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"Running stage '([^']+)'", line)
        if found:
            marks.append((found.group(1), time.perf_counter() - start))
    proc.wait()
    total = time.perf_counter() - start
    output = "".join(lines)
    if proc.returncode != 0:
        sys.exit(f"dvc repro failed in {work}:\n{output}")
    ends = [t for _, t in marks[1:]] + [total]
    stages = {name: round(end - begin, 1) for (name, begin), end in zip(marks, ends, strict=False)}
    return total, stages, output


def knn_baseline(raw_dir: Path, k: int = KNN_K, chunk: int = 500) -> dict[str, float]:
    """Classify the 10k test images by their k nearest training images (Euclidean, raw pixels).

    Ties among the k votes go to the smallest class index, as scikit-learn's KNeighborsClassifier
    does. Distances are computed in float64, exact for integer pixels.
    """
    sys.path.insert(0, str(REPO / "src"))
    from edge.data import load_split

    start = time.perf_counter()
    train_images, train_labels = load_split(raw_dir, "train")
    test_images, test_labels = load_split(raw_dir, "t10k")
    train_x = train_images.reshape(len(train_images), -1).astype(np.float64)
    test_x = test_images.reshape(len(test_images), -1).astype(np.float64)
    train_sq = np.einsum("ij,ij->i", train_x, train_x)
    predicted = np.empty(len(test_x), dtype=np.int64)
    for i in range(0, len(test_x), chunk):
        block = test_x[i : i + chunk]
        # ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2; ||a||^2 is the same for a row, so it can be left out.
        distances = train_sq[None, :] - 2.0 * block @ train_x.T
        nearest = np.argpartition(distances, k, axis=1)[:, :k]
        votes = train_labels[nearest].astype(np.int64)
        counts = (votes[:, :, None] == np.arange(10)).sum(axis=1)
        predicted[i : i + chunk] = counts.argmax(axis=1)
    return {
        "k": k,
        "accuracy": round(float(np.mean(predicted == test_labels)), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def mark(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def report(results: dict[str, Any]) -> str:
    """Render the figures side by side with their targets."""
    p, knn = results["pipeline"], results["knn_baseline"]
    rows = [
        (
            "test accuracy, CNN (default params)",
            f"{p['test_accuracy']:.2%}",
            f">= {TARGET_ACCURACY:.0%}",
            mark(p["test_accuracy"] >= TARGET_ACCURACY),
        ),
        (f"test accuracy, k={knn['k']} nearest neighbours", f"{knn['accuracy']:.2%}", "baseline", ""),
        (
            "pipeline wall clock (dvc repro)",
            f"{p['seconds']:.1f} s",
            f"<= {TARGET_PIPELINE_SECONDS:.0f} s",
            mark(p["seconds"] <= TARGET_PIPELINE_SECONDS),
        ),
        *((f"  stage {name}", f"{secs:.1f} s", "", "") for name, secs in p["stages"].items()),
        ("  of which model.fit", f"{p['train_seconds']:.1f} s", "", ""),
        (
            "second dvc repro (no-op)",
            f"{results['noop']['seconds']:.1f} s",
            f"<= {TARGET_NOOP_SECONDS:.0f} s",
            mark(results["noop"]["seconds"] <= TARGET_NOOP_SECONDS and results["noop"]["no_op"]),
        ),
        (f"k={knn['k']} nearest neighbours, wall clock", f"{knn['seconds']:.1f} s", "", ""),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [
        f"{'':{width}}  {'measured':>10}  {'target':>9}",
        *(
            f"{name:{width}}  {value:>10}  {target:>9}  {status}".rstrip()
            for name, value, target, status in rows
        ),
    ]
    lines.append(f"load average (1 min) before/after: {results['load_before']} / {results['load_after']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=os.environ.get("EDGE_DATA_SOURCE"),
        help="Folder with the Fashion-MNIST files (default: $EDGE_DATA_SOURCE).",
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "pipeline.json")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary clone and print where.")
    parser.add_argument("--skip-knn", action="store_true", help="Do not run the k-NN baseline.")
    args = parser.parse_args()
    source = args.source or (
        "/usr/share/datasets/fashion-mnist" if Path("/usr/share/datasets/fashion-mnist").is_dir() else None
    )
    if not source:
        sys.exit("no data source: pass --source DIR or set EDGE_DATA_SOURCE to the Fashion-MNIST folder")

    temp = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    try:
        work = clone(REPO, temp, source)
        commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=work).stdout.strip()
        print(f"Benchmarking commit {commit} in {work}", flush=True)
        load_before = _load()
        total, stages, _ = timed_repro(work)
        train_metrics = json.loads((work / "reports/train/metrics.json").read_text())
        test_metrics = json.loads((work / "reports/evaluate/metrics.json").read_text())
        print(f"dvc repro: {total:.1f} s, test accuracy {test_metrics['accuracy']:.4f}", flush=True)
        noop_seconds, noop_stages, noop_output = timed_repro(work)
        knn = knn_baseline(work / "data/raw/fashion-mnist") if not args.skip_knn else None
        results: dict[str, Any] = {
            "commit": commit,
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": _load(),
            "pipeline": {
                "seconds": round(total, 1),
                "stages": stages,
                "train_seconds": train_metrics["train_seconds"],
                "epochs": train_metrics["epochs"],
                "val_accuracy": train_metrics["val_accuracy"],
                "test_accuracy": test_metrics["accuracy"],
            },
            "noop": {
                "seconds": round(noop_seconds, 2),
                "no_op": not noop_stages,
                "output": noop_output.strip(),
            },
            "knn_baseline": knn or {"k": KNN_K, "accuracy": float("nan"), "seconds": float("nan")},
            "targets": {
                "test_accuracy": TARGET_ACCURACY,
                "pipeline_seconds": TARGET_PIPELINE_SECONDS,
                "noop_seconds": TARGET_NOOP_SECONDS,
            },
        }
        results["passed"] = {
            "test_accuracy": results["pipeline"]["test_accuracy"] >= TARGET_ACCURACY,
            "pipeline_seconds": total <= TARGET_PIPELINE_SECONDS,
            "noop_seconds": noop_seconds <= TARGET_NOOP_SECONDS and not noop_stages,
        }
        print(report(results))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"Written to {args.output}")
    finally:
        if args.keep:
            print(f"Kept the clone in {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
