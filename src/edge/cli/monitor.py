"""`edge monitor`: judge logged predictions against the model's reference profile, or simulate drift."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.table import Table

from edge.cli.common import console, fail, friendly_errors, out

if TYPE_CHECKING:
    from edge.monitoring.drift import DriftResult
    from edge.monitoring.log import PendingWrite, Phase

app = typer.Typer(
    help="Monitor the served model: drift reports and a drift simulation.", no_args_is_help=True
)

# 0 is no drift; 1 is an error (as everywhere in edge); drift gets its own code so cron and CI can
# tell "the model's inputs changed" from "the report could not run".
ALERT_EXIT_CODE = 3
DURATION = re.compile(r"^(\d+)\s*([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
DEFAULT_SOURCE = "predictions"
TEST_IMAGES = ("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz")
# A writer this late past the time it announced is taken to have stopped (or to be unable to write).
PENDING_GRACE = timedelta(seconds=10)
PENDING_POLL_SECONDS = 0.5
# Without --since, notices of records lost longer ago than this are history, not a reason to doubt.
PENDING_HORIZON = timedelta(days=1)


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """Read `--since`: a duration back from now (30m, 24h, 7d) or an ISO 8601 time (UTC if no zone)."""
    if value is None:
        return None
    now = now or datetime.now(UTC)
    match = DURATION.match(value.strip())
    if match:
        return now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--since {value!r} is neither a duration (30m, 24h, 7d) nor an ISO time (2026-01-31T12:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def report(
    source: Annotated[
        str | None,
        typer.Option(
            help="Prediction log, a directory or gs:// prefix [default: $EDGE_MONITOR_LOG, else predictions]"
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Judge every prediction since then: 30m, 24h, 7d or an ISO time [default: the last "
            "EDGE_MONITOR_WINDOW predictions, the model server's window]"
        ),
    ] = None,
    model_dir: Annotated[
        str | None,
        typer.Option(
            help="The model whose reference profile to compare with [default: $AIP_STORAGE_URI, else models]"
        ),
    ] = None,
    out_dir: Annotated[
        str,
        typer.Option("--out-dir", help="Where report.html and summary.json go (a directory or gs:// prefix)"),
    ] = "reports/monitoring",
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="Include predictions of other model versions")
    ] = False,
) -> None:
    """Compare logged predictions with the model's reference profile; exit 3 when a signal drifted."""
    from edge import model, storage
    from edge.monitoring import drift
    from edge.monitoring.log import read_phases, read_records
    from edge.monitoring.profile import load_profile
    from edge.monitoring.report import REPORT_FILE, by_phase, write_report
    from edge.monitoring.settings import load_settings

    with friendly_errors():
        settings = load_settings()
        log_source = source or settings.log or DEFAULT_SOURCE
        from edge.cli.serve import resolve_model_uri

        model_uri = resolve_model_uri(model_dir)
        start = parse_since(since)
        profile = load_profile(model_uri)
        metadata = model.read_metadata(model_uri)
        began = datetime.now(UTC)
        lost = settle_pending(log_source, began, start)
        records = list(read_records(log_source, start))
        newest = behind(records, datetime.now(UTC))
        console.print(newest, highlight=False)
        others = [r for r in records if r.get("version") != metadata["version"]]
        if not all_versions:
            records = [r for r in records if r.get("version") == metadata["version"]]
        if others and not all_versions:
            console.print(
                f"left out {len(others)} predictions of other model versions than {metadata['version']} "
                "(--all-versions includes them)"
            )
        judged, label = judged_window(records, start, settings.window, metadata["version"], all_versions)
        console.print(f"judging {label}: {len(judged):,} from {log_source}, against the reference profile...")
        result = drift.compare(profile, judged, settings)
        windows = drift.over_time(profile, records, settings)
        phases = by_phase(profile, records, read_phases(log_source), settings)
        context = {
            "source": log_source,
            "since": start.isoformat() if start else None,
            "model": metadata["name"],
            "version": metadata["version"],
            "model_dir": model_uri,
            "window": {"label": label, "count": len(judged), "size": None if start else settings.window},
            "log_read": len(records),
            "newest": newest,
            "lost_writes": [
                {"writer": p.writer, "since": p.since.isoformat(), "due": p.due.isoformat()} for p in lost
            ],
        }
        summary = write_report(out_dir, result, windows, profile, judged, settings, context, phases)
    table = Table(
        "signal",
        "test",
        "statistic",
        "alert above",
        "p-value",
        "alert below",
        "verdict",
        title=f"Drift of {label}",
    )
    for score in result.scores:
        table.add_row(
            score.signal,
            score.test,
            f"{score.statistic:.4g}",
            _limit(score.statistic_limit),
            "" if score.p_value is None else f"{score.p_value:.3g}",
            _limit(score.p_value_limit),
            "[bold red]ALERT[/]" if score.alert else "ok",
        )
    out.print(table)
    if phases:
        out.print(_phase_table(phases))
    console.print(f"report: {storage.join(out_dir, REPORT_FILE)}")
    if not result.enough and lost:
        # Not enough data may only mean the rest never reached the log: no verdict, not "fine".
        fail(
            f"not enough data ({result.count} predictions, {settings.min_records} needed), and "
            f"{_lost(lost)}: the report cannot tell whether predictions are missing"
        )
    if lost:
        console.print(f"[yellow]warning:[/] {_lost(lost)}", highlight=False)
    if not result.enough:
        console.print(
            f"[yellow]not enough data:[/] {result.count} predictions, at least {settings.min_records} "
            "are needed to judge drift"
        )
    if result.alert:
        console.print(f"[bold red]drift alert:[/] {', '.join(summary['alerting'])}")
        raise typer.Exit(ALERT_EXIT_CODE)


def _limit(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _phase_table(phases: list[tuple[Phase, DriftResult]]) -> Table:
    signals = list(dict.fromkeys(s.signal for _, result in phases for s in result.scores))
    table = Table(
        "phase", "predictions", *signals, "verdict", title="Drift by simulated phase (bold: beyond the limit)"
    )
    for phase, result in phases:
        scores = {
            s.signal: s for s in result.scores if s.p_value is not None or s.statistic_limit is not None
        }
        cells = [
            ""
            if signal not in scores
            else (
                f"[bold]{scores[signal].statistic:.3g}[/]"
                if scores[signal].alert
                else f"{scores[signal].statistic:.3g}"
            )
            for signal in signals
        ]
        verdict = "[bold red]alert[/]" if result.alert else ("ok" if result.enough else "not enough data")
        table.add_row(phase.name, f"{result.count:,}", *cells, verdict)
    return table


def judged_window(
    records: list[dict[str, object]], since: datetime | None, size: int, version: str, all_versions: bool
) -> tuple[list[dict[str, object]], str]:
    """The records a report judges, and the window's name.

    Without --since: the last `size` predictions (EDGE_MONITOR_WINDOW), the very window the model
    server's live drift judges, under the same name. With --since: every prediction since then.
    """
    from edge.monitoring.log import window_label

    if since is not None:
        which = "every model version" if all_versions else f"model version {version}"
        return records, f"every prediction of {which} since {since:%Y-%m-%d %H:%M:%S} UTC"
    ordered = sorted(records, key=lambda r: str(r["time"]))[-size:]
    if all_versions:
        return ordered, f"the last {size:,} predictions of every model version"
    return ordered, window_label(size, version)


def settle_pending(source: str, began: datetime, start: datetime | None = None) -> list[PendingWrite]:
    """Wait for the records writers held when the report began; return the notices of those that
    never wrote them (a process of this host that ended, or overdue by more than PENDING_GRACE:
    stopped, or unable to write).

    Records that arrive after `began` are not waited for, so steady traffic cannot hold a report up;
    notices from before `start` (default: PENDING_HORIZON before `began`) are not looked at.
    """
    from edge.monitoring.log import pending_writes

    said = False
    while True:
        now = datetime.now(UTC)
        held = [p for p in pending_writes(source, start or began - PENDING_HORIZON) if p.since <= began]
        waiting = [p for p in held if p.due + PENDING_GRACE > now and not p.gone()]
        if not waiting:
            return held
        if not said:
            due = max(p.due for p in waiting)
            console.print(
                f"waiting for predictions in flight: {len(waiting)} log writer(s) hold records they "
                f"write by {due:%H:%M:%S} UTC ({max(0.0, (due - now).total_seconds()):.0f} s)",
                highlight=False,
            )
            said = True
        time.sleep(PENDING_POLL_SECONDS)


def _lost(notices: list[PendingWrite]) -> str:
    writers = ", ".join(f"{p.writer} (held since {p.since:%H:%M:%S}, due {p.due:%H:%M:%S})" for p in notices)
    return (
        f"records held by {writers} never reached the log: that server was stopped, or cannot write "
        "there (its /metrics count them in edge_prediction_log_dropped)"
    )


def behind(records: list[dict[str, object]], now: datetime) -> str:
    """Say how old the newest logged record is: how far the log is behind."""
    if not records:
        return "the log holds no predictions in this range"
    newest = max(datetime.fromisoformat(str(r["time"])) for r in records)
    return (
        f"newest prediction in the log: {newest:%Y-%m-%d %H:%M:%S} UTC, "
        f"{_age((now - newest).total_seconds())} before this report"
    )


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


def load_test_images(source: Path) -> np.ndarray:
    """Read Fashion-MNIST's test images from a folder holding the IDX file, compressed or not."""
    from edge.data import read_idx

    for name in TEST_IMAGES:
        if (source / name).is_file():
            return read_idx(source / name)
    raise FileNotFoundError(
        f"no {TEST_IMAGES[0]}(.gz) in {source}: run `edge data seed` or pass --data-dir with the test files"
    )


def _post(url: str, images: np.ndarray, timeout: float) -> list[dict[str, object]]:
    body = json.dumps({"instances": np.rint(images).astype(int).tolist()}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        predictions: list[dict[str, object]] = json.loads(response.read())["predictions"]
    return predictions


def _record_phases(log: str, phases: list[Phase]) -> str:
    """Write the phases' time spans beside the server's log, so a report can judge each phase."""
    from edge import storage
    from edge.monitoring.log import write_phases

    if not storage.exists(log):
        return f"no prediction log at {log}: the phases are not recorded (--log names the server's log)"
    return f"phases recorded in {write_phases(log, phases[0].run, phases)}: the report judges each one"


def _flush(url: str) -> str:
    """Ask the server to write its prediction log now, so that a report run next sees everything."""
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "the server has no /monitoring/flush: its log is written within EDGE_MONITOR_FILE_SECONDS"
        return f"the server could not write its prediction log in time ({url}: HTTP {exc.code})"
    except (urllib.error.URLError, OSError) as exc:
        return f"the server could not be asked to write its prediction log ({url}: {exc})"
    return "the server wrote every prediction to its log: a report now sees them all"


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="The model server's base URL")] = "http://127.0.0.1:8080",
    data_dir: Annotated[
        Path, typer.Option(help="Folder with Fashion-MNIST's test images (IDX, .gz or not)")
    ] = Path("data/raw/fashion-mnist"),
    phases: Annotated[
        str,
        typer.Option(
            help="Comma-separated phases, in order: clean, shifted, darkened, noisy, inverted, digits"
        ),
    ] = "clean,shifted,darkened,noisy,inverted,digits",
    per_phase: Annotated[int, typer.Option(help="Images sent in each phase", min=1)] = 500,
    batch: Annotated[int, typer.Option(help="Images per request", min=1, max=64)] = 16,
    pause: Annotated[float, typer.Option(help="Seconds to wait between phases", min=0)] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the image choice and the shifts")] = 0,
    log: Annotated[
        str | None,
        typer.Option(
            help="The server's prediction log, where the phases are recorded for the report "
            "[default: $EDGE_MONITOR_LOG, else predictions]"
        ),
    ] = None,
) -> None:
    """Send clean test images, then shifted, darkened, noisy and out-of-domain ones, to a running server."""
    from edge.monitoring.log import Phase
    from edge.monitoring.shifts import SHIFTS

    chosen = [p.strip() for p in phases.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in SHIFTS]
    if unknown or not chosen:
        fail(f"unknown phase(s) {unknown}; choose from {', '.join(SHIFTS)}")
    with friendly_errors():
        images = load_test_images(data_dir)
    predict_url = url.rstrip("/") + "/predict"
    rng = np.random.default_rng(seed)
    started = datetime.now(UTC)
    table = Table("phase", "images", "from", "mean confidence", "top predicted classes", title="Simulation")
    sent: list[Phase] = []
    for phase in chosen:
        phase_start = datetime.now(UTC)
        picked = images[rng.choice(len(images), per_phase, replace=False)]
        shifted = SHIFTS[phase](picked, rng)
        confidences: list[float] = []
        labels: list[str] = []
        for offset in range(0, per_phase, batch):
            try:
                predictions = _post(predict_url, shifted[offset : offset + batch], timeout=30)
            except (urllib.error.URLError, OSError) as exc:
                fail(f"cannot reach the model server at {predict_url}: {exc}; is `edge serve` running?")
            confidences += [float(str(p["confidence"])) for p in predictions]
            labels += [str(p["label"]) for p in predictions]
        sent.append(Phase(phase, phase_start, datetime.now(UTC), per_phase, f"{started:%Y%m%dT%H%M%S%fZ}"))
        names, counts = np.unique(labels, return_counts=True)
        top = ", ".join(f"{names[i]} {counts[i] * 100 // len(labels)}%" for i in np.argsort(-counts)[:3])
        table.add_row(phase, str(per_phase), f"{phase_start:%H:%M:%S}", f"{np.mean(confidences):.3f}", top)
        console.print(f"{phase}: sent {per_phase} images, mean confidence {np.mean(confidences):.3f}")
        if pause and phase != chosen[-1]:
            time.sleep(pause)
    out.print(table)
    console.print(_flush(url.rstrip("/") + "/monitoring/flush"), highlight=False)
    from edge.monitoring.settings import load_settings

    console.print(_record_phases(log or load_settings().log or DEFAULT_SOURCE, sent))
    console.print(
        "watch it in the report: edge monitor report --since "
        f"{started:%Y-%m-%dT%H:%M:%S} (each phase also shows on the server's /metrics drift gauges)"
    )
