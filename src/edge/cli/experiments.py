"""`edge experiments`: review tracked training runs, and copy the local journal into MongoDB.

Runs are read from MongoDB when EDGE_TRACKING_URL is set, else from the local journal (`runs/`);
both give the same output. Ids are the first 8 characters of a run's uuid, the same in both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edge.cli.common import console, fail, friendly_errors, out
from edge.data import CLASS_NAMES
from edge.tracking import observers, report
from edge.tracking.records import FileRuns, MongoRuns, NotFoundError, RunRecord, RunSource, find

app = typer.Typer(
    help="Review tracked training runs (list, show, compare) and sync the local journal into MongoDB.",
    no_args_is_help=True,
)

RunsDirOpt = Annotated[
    Path,
    typer.Option("--runs-dir", envvar=observers.RUNS_DIR_ENV, help="The local journal of runs."),
]
FilesOpt = Annotated[
    bool, typer.Option("--files", help="Read the local journal even when EDGE_TRACKING_URL is set.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

STATUS_STYLE = {"COMPLETED": "green", "FAILED": "red", "INTERRUPTED": "yellow", "RUNNING": "cyan"}


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _open(runs_dir: Path, files: bool) -> RunSource:
    url = None if files else observers.tracking_url()
    if url is None:
        return FileRuns(runs_dir, warn=_warn)
    try:
        return MongoRuns(observers.connect(url))
    except observers.TrackingUnavailableError as exc:
        fail(f"{exc}; read the local journal instead with --files")
        raise  # unreachable: fail() exits


def _find(source: RunSource, key: str) -> RunRecord:
    try:
        return find(source.runs(), key)
    except NotFoundError as exc:
        fail(f"{exc} (in {source.label})")
        raise


# Columns of `edge experiments list`, most important first: the first ones that fit are shown.
LIST_PRIORITY = (
    "id",
    "status",
    "verdict",
    "test acc",
    "start (UTC)",
    "commit",
    "params",
    "data",
    "duration",
    "user",
    "host",
)
# `params` wraps; below this width it would be unreadable, so it counts as this wide.
PARAMS_MIN_WIDTH = 24


def fit_columns(columns: dict[str, list[str]], width: int) -> list[str]:
    """The columns (in their original order) that fit in `width` characters, by LIST_PRIORITY."""
    from rich.text import Text

    def needed(name: str) -> int:
        cells = [Text.from_markup(cell).cell_len for cell in columns[name]]
        content = max([len(name), *cells])
        return min(content, PARAMS_MIN_WIDTH) if name == "params" else content

    used, chosen = 1, set()  # the table's left border
    for name in LIST_PRIORITY:
        cost = needed(name) + 3  # padding either side and a border
        if name in columns and used + cost <= width:
            chosen.add(name)
            used += cost
    return [name for name in columns if name in chosen]


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _verdict(run: RunRecord) -> tuple[str, list[str]]:
    """The test suite's verdict recorded with the run (passed or failed) and its failed checks."""
    recorded = run.info.get("verdict") or {}
    status = str(recorded.get("status") or "-")
    style = {"passed": "green", "failed": "red"}.get(status, "white")
    return f"[{style}]{status}[/]", [str(check) for check in recorded.get("failed_checks") or []]


def _print_json(content: Any) -> None:
    out.print_json(json.dumps(content, default=str))


@app.command("list")
def list_runs(
    runs_dir: RunsDirOpt = Path(observers.DEFAULT_RUNS_DIR),
    files: FilesOpt = False,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="Show at most this many runs, newest first.")] = 50,
) -> None:
    """List runs, newest first: status, when, who, where, code and data versions, settings, accuracy."""
    with friendly_errors():
        source = _open(runs_dir, files)
        runs = sorted(source.runs(), key=lambda r: (r.start is not None, r.start), reverse=True)[:limit]
    if as_json:
        _print_json([report.summary(r) for r in runs])
        return
    if not runs:
        console.print(f"No runs in {source.label} yet: `edge pipeline train` records one.")
        return
    columns = {
        "id": [run.id for run in runs],
        "status": [_status(run.status) for run in runs],
        "verdict": [_verdict(run)[0] for run in runs],
        "start (UTC)": [run.start.strftime("%Y-%m-%d %H:%M") if run.start else "-" for run in runs],
        "duration": [report.duration(run.duration) for run in runs],
        "user": [run.user or "-" for run in runs],
        "host": [run.host.get("hostname", "-") for run in runs],
        "commit": [report.commit(run) for run in runs],
        "data": [run.data_fingerprint or "-" for run in runs],
        "params": [report.key_params(run) for run in runs],
        "test acc": [f"{run.test_accuracy:.4f}" if run.test_accuracy is not None else "-" for run in runs],
    }
    shown = fit_columns(columns, out.width)
    hidden = [name for name in columns if name not in shown]
    caption = f"hidden at {out.width} columns: {', '.join(hidden)} (widen the terminal, or --json)"
    table = Table(title=f"Runs in {source.label}", caption=caption if hidden else None)
    for name in shown:
        table.add_column(name, no_wrap=name != "params", justify="right" if name == "test acc" else "left")
    for index in range(len(runs)):
        table.add_row(*(columns[name][index] for name in shown))
    out.print(table)


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="A run's id (a uuid prefix) or its number.")],
    runs_dir: RunsDirOpt = Path(observers.DEFAULT_RUNS_DIR),
    files: FilesOpt = False,
    as_json: JsonOpt = False,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw the metric curves into this PNG file.", dir_okay=False)
    ] = None,
) -> None:
    """Show everything recorded about a run, with its metric curves."""
    with friendly_errors():
        source = _open(runs_dir, files)
        run = _find(source, run_id)
    if plot:
        plot.write_bytes(report.metrics_png(run))
        console.print(f"Metric curves written to {plot}.")
    if as_json:
        _print_json(run.as_dict())
        return
    _show(run)
    out.print(f"Stored as run {run.backend_id} in {source.label}.", highlight=False)


def _show(run: RunRecord) -> None:
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    git = run.git or {}
    host = run.host
    rows = [
        ("run", f"{run.id}  {_status(run.status)}  (uuid {run.uuid})"),
        ("verdict", "; ".join([_verdict(run)[0], *_verdict(run)[1]])),
        ("experiment", f"{run.experiment or '-'}, command {run.command or '-'}"),
        ("started", f"{run.start:%Y-%m-%d %H:%M:%S} UTC" if run.start else "-"),
        ("stopped", f"{run.stop:%Y-%m-%d %H:%M:%S} UTC" if run.stop else "-"),
        ("duration", report.duration(run.duration)),
        ("user", run.user or "-"),
        ("host", host.get("hostname", "-")),
        (
            "platform",
            f"{host.get('os', ['-'])[0]}, Python {host.get('python_version', '-')}, {host.get('cpu', '-')}",
        ),
        ("commit", f"{git.get('commit', '-')}{' (dirty: uncommitted changes)' if git.get('dirty') else ''}"),
        ("branch", str(git.get("branch") or "-")),
        ("remote", str(git.get("remote") or "-")),
    ]
    rows += [(f"data {path}", md5) for path, md5 in sorted(run.data_version.items())] or [("data", "-")]
    if run.info.get("vertex_job"):
        rows.append(("vertex job", str(run.info["vertex_job"])))
    for name, value in rows:
        overview.add_row(name, value)
    out.print(overview)

    params = Table(title="Parameters (params.yaml)", title_justify="left")
    params.add_column("setting")
    params.add_column("value", justify="right")
    for key, value in report.flatten(run.params).items():
        params.add_row(key, report.cell(value))
    out.print(params)

    if run.result:
        results = Table(title="Results", title_justify="left")
        results.add_column("metric")
        results.add_column("value", justify="right")
        for key, value in run.result.items():
            results.add_row(key, report.cell(value))
        out.print(results)

    if run.metrics:
        curves = Table(title="Metric curves (per epoch)", title_justify="left")
        for column in ("metric", "curve", "first", "last", "min", "max"):
            curves.add_column(column, justify="left" if column in ("metric", "curve") else "right")
        for name in report.ordered_metrics(run):
            values = run.metrics[name].values
            curves.add_row(
                name,
                report.sparkline(values),
                *(report.cell(v) for v in (values[0], values[-1], min(values), max(values))),
            )
        out.print(curves)

    if run.test and run.test.get("per_class"):
        per_class = Table(title="Test set, per class", title_justify="left")
        for column in ("class", "precision", "recall", "f1"):
            per_class.add_column(column, justify="left" if column == "class" else "right")
        # The journal sorts keys; show the classes in their label order.
        scores_by_class = run.test["per_class"]
        for name in sorted(scores_by_class, key=lambda c: CLASS_NAMES.index(c) if c in CLASS_NAMES else 99):
            scores = scores_by_class[name]
            per_class.add_row(name, *(f"{scores[k]:.3f}" for k in ("precision", "recall", "f1")))
        out.print(per_class)

    out.print(f"[bold]artifacts[/]  {', '.join(run.artifacts) or '-'}")
    out.print(f"[bold]sources[/]    {', '.join(run.sources) or '-'}", highlight=False)
    if run.fail_trace:
        out.print("[bold red]failure[/]")
        out.print(run.fail_trace.rstrip(), markup=False, highlight=False)


@app.command()
def compare(
    run_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Two or more runs.")],
    runs_dir: RunsDirOpt = Path(observers.DEFAULT_RUNS_DIR),
    files: FilesOpt = False,
    as_json: JsonOpt = False,
    only_differences: Annotated[
        bool, typer.Option("--only-differences", help="Hide the rows where all runs agree.")
    ] = False,
) -> None:
    """Put runs' parameters and metrics side by side; `≠` marks (and colour highlights) differences."""
    with friendly_errors():
        if len(run_ids) < 2:
            raise ValueError("compare needs at least two run ids")
        source = _open(runs_dir, files)
        all_runs = source.runs()
        runs = []
        for key in run_ids:
            try:
                runs.append(find(all_runs, key))
            except NotFoundError as exc:
                fail(f"{exc} (in {source.label})")
    rows = report.comparison(runs)
    if only_differences:
        rows = [row for row in rows if row[2]]
    if as_json:
        _print_json(
            {
                "runs": [r.id for r in runs],
                "rows": [{"name": n, "values": v, "differs": d} for n, v, d in rows],
            }
        )
        return
    table = Table(title=f"{len(runs)} runs compared")
    table.add_column("")
    table.add_column("setting / metric")
    for run in runs:
        table.add_column(run.id, justify="right")
    for name, cells, differs in rows:
        style = "bold yellow" if differs else None
        table.add_row("≠" if differs else "", name, *cells, style=style)
    out.print(table)


@app.command()
def sync(runs_dir: RunsDirOpt = Path(observers.DEFAULT_RUNS_DIR)) -> None:
    """Copy the journal's runs that MongoDB ($EDGE_TRACKING_URL) lacks into it; again, it adds nothing.

    Safe to run twice at once and to interrupt at any point: the next sync completes what is missing.
    """
    from edge.tracking.sync import sync as sync_runs

    with friendly_errors():
        url = observers.tracking_url()
        if url is None:
            fail(f"set {observers.TRACKING_URL_ENV} to the MongoDB URL to copy the runs in {runs_dir} into")
            return
        try:
            store = observers.connect(url)
        except observers.TrackingUnavailableError as exc:
            fail(str(exc))
            return
        done = sync_runs(runs_dir, store, warn=_warn)
    damaged = f", {len(done.damaged)} damaged skipped" if done.damaged else ""
    console.print(
        f"Synced {runs_dir} into {store.label}: {len(done.copied)} run(s) copied, {len(done.repaired)} "
        f"completed, {len(done.present)} already there, {len(done.unfinished)} unfinished left for "
        f"later{damaged}.",
        highlight=False,
    )


@app.command()
def dashboard(
    port: Annotated[int, typer.Option(help="Publish Omniboard on 127.0.0.1:PORT.")] = 9000,
    image: Annotated[str | None, typer.Option(help="The Omniboard image.")] = None,
    browser: Annotated[bool, typer.Option(help="Open it in the web browser.")] = True,
) -> None:
    """Open Omniboard on the team's runs: MongoDB from $EDGE_TRACKING_URL, else edge.yaml's secret.

    Omniboard runs here in Docker, on 127.0.0.1 only, until Ctrl-C.
    """
    import webbrowser

    from edge.cloud import settings as cfg
    from edge.cloud.clients import tracking_url_from_secret
    from edge.tracking import dashboard as board

    with friendly_errors():
        url = observers.tracking_url()
        if url is None:
            settings = cfg.load()
            secret = f"projects/{settings.project}/secrets/{settings.tracking_secret}/versions/latest"
            with console.status(f"Reading the tracking URL from {secret}..."):
                url = tracking_url_from_secret(secret)
        try:
            with console.status(f"Starting Omniboard on MongoDB {observers.mask_url(url)}..."):
                container = board.start_omniboard(url, port, image or board.OMNIBOARD_IMAGE)
            try:
                address = board.wait_until_up(port, container)
                console.print(f"Omniboard: {address} (Ctrl-C stops it)")
                if browser:
                    webbrowser.open(address)
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            finally:
                container.stop(timeout=5)
        except board.DashboardError as exc:
            fail(str(exc))
