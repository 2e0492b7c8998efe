"""Draw what bench_pipeline.py measured: test accuracy and pipeline time per seed, against the targets.

    python benchmarks/plot_pipeline.py bench-results/pipeline.json [more.json ...] --out FILE.png

Each JSON file is one run of bench_pipeline.py (one precision); its seeds are drawn side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TARGET_ACCURACY = 0.935


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-pipeline.png"))
    args = parser.parse_args()
    results = [json.loads(path.read_text()) for path in args.results]
    runs = [run for result in results for run in result["runs"]]
    # Wall-clock time depends on what else the machine ran: say so beside the bars.
    loads = [float(result["load_after"][0]) for result in results]
    labels = [f"seed {r['seed']}\n{r['precision'].replace('mixed_', '')}" for r in runs]
    colours = ["tab:green" if r["passed"] else "tab:red" for r in runs]
    figure, (accuracy, seconds) = plt.subplots(1, 2, figsize=(11, 4))
    positions = range(len(runs))
    accuracy.bar(positions, [100 * r["test_accuracy"] for r in runs], color=colours)
    accuracy.axhline(100 * TARGET_ACCURACY, color="black", linestyle="--", label="target 93.5%")
    accuracy.set_ylim(92, 94.5)
    accuracy.set_ylabel("test accuracy, %")
    accuracy.set_title("Test accuracy (green: every check passed)")
    limits = {"mixed_bfloat16": 360.0, "float32": 720.0}
    seconds.bar(positions, [r["seconds"] for r in runs], color="tab:blue")
    for limit in sorted({limits.get(r["precision"], 720.0) for r in runs}):
        seconds.axhline(limit, color="black", linestyle="--", label=f"target {limit / 60:.0f} min")
    seconds.set_ylabel("dvc repro, seconds")
    seconds.set_title(f"Whole pipeline (load average after: {', '.join(f'{x:.1f}' for x in loads)})")
    for axes in (accuracy, seconds):
        axes.set_xticks(list(positions), labels, fontsize=8)
        axes.legend(loc="lower right", fontsize=8)
    figure.suptitle(results[0]["cpu"], fontsize=9)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"Written to {args.out}")


if __name__ == "__main__":
    main()
