"""Turn run records into what people read: short cells, sparklines, comparisons and a metrics PNG."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from edge.tracking.records import RunRecord

SPARK = "▁▂▃▄▅▆▇█"
# The hyperparameters a run is usually told apart by, in the order `list` shows them.
KEY_PARAMS = (
    ("epochs", "train.epochs"),
    ("batch", "train.batch_size"),
    ("lr", "train.learning_rate"),
    ("filters", "train.model.filters"),
    ("seed", "train.seed"),
)
METRIC_ORDER = ("loss", "val_loss", "accuracy", "val_accuracy", "learning_rate")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested settings into dotted keys: {"train": {"epochs": 1}} -> {"train.epochs": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def cell(value: Any) -> str:
    """Render a setting or a metric compactly."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return (
            f"{value:.4g}"
            if abs(value) < 1e-3 or abs(value) >= 1e4
            else f"{value:.4f}".rstrip("0").rstrip(".")
        )
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    return str(value)


def duration(seconds: float | None) -> str:
    """1 h 02 m, 3 m 05 s, 42 s."""
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} m"
    if minutes:
        return f"{minutes} m {secs:02d} s"
    return f"{secs} s"


def commit(run: RunRecord) -> str:
    """The short commit, with `*` when the working tree had uncommitted changes."""
    if not run.git or not run.git.get("commit"):
        return "-"
    return str(run.git["commit"])[:7] + ("*" if run.git.get("dirty") else "")


def key_params(run: RunRecord) -> str:
    flat = flatten(run.params)
    return " ".join(f"{label}={cell(flat[key])}" for label, key in KEY_PARAMS if key in flat)


def summary(run: RunRecord) -> dict[str, Any]:
    """One line of `list`, as plain values (for --json) in column order."""
    return {
        "id": run.id,
        "status": run.status,
        # The model test suite's verdict at training time: passed or failed, and the failed checks.
        "verdict": run.info.get("verdict"),
        "start": run.start.isoformat(timespec="seconds") if run.start else None,
        "duration_seconds": run.duration,
        "user": run.user,
        "host": run.host.get("hostname"),
        "commit": (run.git or {}).get("commit"),
        "dirty": (run.git or {}).get("dirty"),
        "data_version": run.data_fingerprint,
        "params": {key: flatten(run.params).get(key) for _, key in KEY_PARAMS},
        "test_accuracy": run.test_accuracy,
        "uuid": run.uuid,
        "backend_id": run.backend_id,
    }


def sparkline(values: Sequence[float]) -> str:
    """A Unicode sparkline, lowest value ▁ to highest █."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low
    return "".join(
        " " if not math.isfinite(v) else SPARK[round((v - low) / span * (len(SPARK) - 1)) if span else 3]
        for v in values
    )


def ordered_metrics(run: RunRecord) -> list[str]:
    known = [m for m in METRIC_ORDER if m in run.metrics]
    return known + sorted(set(run.metrics) - set(known))


def comparison(runs: Sequence[RunRecord]) -> list[tuple[str, list[str], bool]]:
    """Rows of (name, one cell per run, whether the runs differ): parameters, then metrics."""
    rows: list[tuple[str, list[str], bool]] = []

    def add(name: str, values: Iterable[Any]) -> None:
        cells = [cell(v) for v in values]
        rows.append((name, cells, len(set(cells)) > 1))

    flats = [flatten(r.params) for r in runs]
    for key in sorted(set().union(*flats)):
        add(key, (f.get(key) for f in flats))
    add("commit", (commit(r) for r in runs))
    add("data_version", (r.data_fingerprint for r in runs))
    add("status", (r.status for r in runs))
    for metric in ("epochs", "val_accuracy", "val_loss", "test_accuracy", "test_loss"):
        add(metric, ((r.result or {}).get(metric) for r in runs))
    add("duration", (duration(r.duration) for r in runs))
    return rows


def metrics_png(run: RunRecord) -> bytes:
    """Draw every metric curve of a run, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = ordered_metrics(run)
    fig, axes = plt.subplots(len(names) or 1, 1, figsize=(7, 2.2 * max(len(names), 1)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=False):
        metric = run.metrics[name]
        ax.plot(metric.steps, metric.values, marker="o", markersize=3)
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    fig.suptitle(f"Run {run.id} ({run.status})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
