"""`edge pipeline`: the training pipeline's stages, the very commands DVC, containers and Vertex run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edge import envsettings, lineage, storage, verdict
from edge.cli.common import console, fail, friendly_errors, out
from edge.data import DEFAULT_RAW_DIR
from edge.model import ModelIntegrityError, verify_model_uri
from edge.pipeline import evaluate_stage, load_params, prepare_stage
from edge.tracked_training import tracked_train_stage
from edge.tracking import observers

app = typer.Typer(help="Run the training pipeline's stages: prepare, train, evaluate.", no_args_is_help=True)

ParamsOpt = Annotated[Path, typer.Option("--params", help="The experiment settings file.")]
RawDirOpt = Annotated[str, typer.Option(help="Raw IDX files (local path or gs:// URI).")]
PreparedOpt = Annotated[str, typer.Option(help="Prepared splits (local path or gs:// URI).")]
ModelDirOpt = Annotated[
    str, typer.Option(envvar="AIP_MODEL_DIR", help="Model output; defaults to $AIP_MODEL_DIR on Vertex AI.")
]
ReportsOpt = Annotated[str, typer.Option(help="Metrics and plots (local path or gs:// URI).")]

DEFAULT_PREPARED = "data/prepared"
DEFAULT_MODEL_DIR = "models"
DEFAULT_REPORTS = "reports"


@app.command()
def prepare(
    params: ParamsOpt = Path("params.yaml"),
    raw_dir: RawDirOpt = str(DEFAULT_RAW_DIR),
    prepared_dir: PreparedOpt = DEFAULT_PREPARED,
) -> None:
    """Check the raw IDX files and write deterministic train/validation/test splits."""
    with friendly_errors():
        summary = prepare_stage(raw_dir, prepared_dir, load_params(params).prepare)
    counts = ", ".join(f"{name} {info['count']:,}" for name, info in summary.items())
    console.print(f"Prepared {counts} images into {prepared_dir}.")


@app.command()
def train(
    params: Annotated[
        str, typer.Option("--params", help="The experiment settings (local or gs://).")
    ] = "params.yaml",
    prepared_dir: PreparedOpt = DEFAULT_PREPARED,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    reports_dir: ReportsOpt = f"{DEFAULT_REPORTS}/train",
    on: Annotated[
        str | None,
        typer.Option(
            "--on",
            envvar="EDGE_TRAIN_ON",
            help="local, or vertex (a Vertex AI job); default: train_on in edge.yaml, else local.",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            help="--on vertex: the trainer image by digest (default: the one pushed for this commit)."
        ),
    ] = None,
    cancel_on_interrupt: Annotated[
        bool | None,
        typer.Option(
            "--cancel-on-interrupt/--keep-on-interrupt",
            help="--on vertex: what Ctrl-C does to the job (default: ask).",
            show_default=False,
        ),
    ] = None,
    wait_timeout: Annotated[
        float | None,
        typer.Option(help="--on vertex: stop waiting (and cancel the job) after this many seconds."),
    ] = None,
    attach: Annotated[
        str | None,
        typer.Option(
            help="--on vertex: follow this job (its id) instead of submitting one, and bring its "
            "outputs home, e.g. after Ctrl-C left it running.",
            show_default=False,
        ),
    ] = None,
    journal_uri: Annotated[
        str | None,
        typer.Option(
            envvar="EDGE_JOURNAL_URI", help="Also copy the run's journal here (a Vertex job's output)."
        ),
    ] = None,
) -> None:
    """Train the CNN; write the .keras model, the serving export, metadata, history and metrics."""
    where = on or _default_train_on()
    if where not in ("local", "vertex"):
        fail(f"--on {where}: choose local or vertex")
    if attach and where != "vertex":
        fail("--attach follows a Vertex AI job: add --on vertex")
    with friendly_errors():
        # Before minutes of training, not after them: a place the model could not be published to.
        storage.check_publish_target(model_dir)
    if where == "vertex":
        from edge.cli.vertex import train_on_vertex

        with friendly_errors():
            train_on_vertex(
                params, prepared_dir, model_dir, reports_dir, image, cancel_on_interrupt, wait_timeout, attach
            )
        return
    with friendly_errors():
        settings = load_params(params)
        _tracking_url_from_secret()
        journal = observers.runs_dir()
        before = _run_folders(journal)
        try:
            # A tracked run: recorded with its lineage, metrics, test scores and artifacts (edge.tracking).
            result, metadata, judged = tracked_train_stage(
                prepared_dir,
                model_dir.rstrip("/") or model_dir,
                reports_dir,
                settings,
                _lineage(settings.as_dict()),
            )
        finally:
            if journal_uri:
                _copy_journal(journal, before, journal_uri)
    console.print(
        f"Trained {len(result.history)} epoch(s) in {result.seconds:.0f} s: validation accuracy "
        f"{result.final['val_accuracy']:.4f}; model {metadata['version']} saved to {model_dir}."
    )
    if judged is not None and not judged.passed:
        console.print(
            f"[yellow]warning:[/] {escape(judged.describe())}. Its run is recorded as FAILED; the "
            "evaluate stage (`dvc repro` runs it next) judges the exported model and says what to do.",
            highlight=False,
            soft_wrap=True,
        )


def _default_train_on() -> str:
    """train_on from edge.yaml when there is one (a laptop set up for the cloud), else local."""
    from edge.cloud import settings as cfg

    path = cfg.config_path()
    return cfg.load(path).train_on if path.is_file() else "local"


def _tracking_url_from_secret() -> None:
    """In a Vertex job: read the tracking URL from the Secret Manager version named by the job's env.

    Only into this process's environment; an unreadable secret leaves the run to the journal, and the
    warning says why it could not be read and what to check.
    """
    environment = envsettings.environment()
    version = environment.tracking_secret
    if not version or environment.tracking_url:
        return
    try:
        from edge.cloud.clients import read_secret

        os.environ[observers.TRACKING_URL_ENV] = read_secret(version)
    except Exception as exc:  # the journal records the run whatever went wrong: never fail training
        console.print(
            f"[yellow]warning:[/] the tracking URL could not be read from {version}: "
            f"{escape(secret_problem(exc))}. The run is recorded in the journal only; once the URL can "
            "be read, `edge experiments sync` sends it to MongoDB.",
            highlight=False,
            soft_wrap=True,
        )


# Secret Manager's answers, by HTTP status (google-api-core's `GoogleAPICallError.code`), and what to
# check. Access needs `secretmanager.versions.access`, granted by roles/secretmanager.secretAccessor
# (https://cloud.google.com/secret-manager/docs/access-control).
_SECRET_PROBLEMS = {
    401: "the credentials were refused; check the job's service account (or your "
    "`gcloud auth application-default login`)",
    403: "no permission; check that the job's service account has roles/secretmanager.secretAccessor on "
    "the secret and that the Secret Manager API is enabled (`edge setup` grants both)",
    404: "no such secret or version; check EDGE_TRACKING_SECRET (projects/PROJECT/secrets/NAME/versions/"
    "VERSION) and tracking_secret in edge.yaml, or run `edge setup` to create it",
    400: "the version cannot be read (disabled, destroyed or misnamed); enable it or add a new version",
}
_NETWORK_CODES = {408, 429, 500, 502, 503, 504}
_NETWORK = "Secret Manager could not be reached; check the network and the endpoint, then retry"


def secret_problem(exc: BaseException) -> str:
    """Say what went wrong reading a secret, and what to check, from a google-api-core error or other."""
    code = getattr(exc, "code", None)
    detail = str(getattr(exc, "message", None) or exc).strip()
    # api_core's REST errors start with "<METHOD> <url>: "; the URL says nothing the user needs.
    if detail.split(" ", 1)[0] in {"GET", "POST"} and ": " in detail:
        detail = detail.split(": ", 1)[1]
    detail = detail.splitlines()[0] if detail else type(exc).__name__
    if isinstance(code, int) and code in _SECRET_PROBLEMS:
        return f"{_SECRET_PROBLEMS[code]} ({code} {detail})"
    network = isinstance(exc, OSError) or (isinstance(code, int) and code in _NETWORK_CODES)
    # Transport failures that are not OSErrors: google-auth's TransportError, api_core's RetryError.
    network = network or type(exc).__name__ in {"TransportError", "RetryError"}
    if network:
        return f"{_NETWORK} ({type(exc).__name__}: {detail})"
    return f"{type(exc).__name__}: {detail}"


def _run_folders(journal: Path) -> set[str]:
    return {d.name for d in journal.iterdir()} if journal.is_dir() else set()


def _copy_journal(journal: Path, before: set[str], uri: str) -> None:
    """Copy the run folders this process added to the journal under `uri` (finished or failed)."""
    for name in sorted(_run_folders(journal) - before):
        if name.isdigit():
            storage.upload_tree(journal / name, storage.join(uri, name))


@app.command()
def evaluate(
    params: ParamsOpt = Path("params.yaml"),
    prepared_dir: PreparedOpt = DEFAULT_PREPARED,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    reports_dir: ReportsOpt = f"{DEFAULT_REPORTS}/evaluate",
) -> None:
    """Score the exported model on the test split and fail when it is under the quality gate."""
    with friendly_errors():
        gate = load_params(params).evaluate
        try:
            result = evaluate_stage(prepared_dir, model_dir, reports_dir, gate)
        finally:
            _print_metrics(reports_dir)
    out.print(result.table(), highlight=False)
    console.print(
        f"Test accuracy {result.evaluation.accuracy:.4f}: all {len(result.checks)} checks of the model "
        "test suite pass."
    )


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    seed: Annotated[bool, typer.Option("--seed", help="Seed the raw data first when it is missing.")] = False,
    raw_dir: RawDirOpt = str(DEFAULT_RAW_DIR),
    prepared_dir: PreparedOpt = DEFAULT_PREPARED,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    reports_dir: ReportsOpt = DEFAULT_REPORTS,
    skip_if_trained: Annotated[
        bool,
        typer.Option(help="Do nothing when the model directory holds a complete model that passed the gate."),
    ] = False,
) -> None:
    """Run prepare, train and evaluate in one process, without DVC (containers, Vertex AI)."""
    if skip_if_trained and _holds_approved_model(model_dir):
        console.print(
            f"{model_dir} already holds a model: nothing to do (omit --skip-if-trained to retrain)."
        )
        return
    if seed:
        from edge.cli.data import seed_data

        with friendly_errors():
            # A string, not a Path: Path("gs://b/raw") would be the local folder "gs:/b/raw".
            seed_data(raw_dir, source=None, track=False)
    prepare(params, raw_dir, prepared_dir)
    train(str(params), prepared_dir, model_dir, f"{reports_dir}/train", on="local")
    evaluate(params, prepared_dir, model_dir, f"{reports_dir}/evaluate")


def _holds_approved_model(model_dir: str) -> bool:
    """Tell whether `model_dir` holds a complete, unmixed model that passed its test suite; say why
    an existing one is not reused.

    Training publishes the model before the suite judges it, so a failed run leaves a model behind:
    without this a rerun (compose's trainer) would keep it.
    """
    if not storage.exists(model_dir):
        return False
    try:
        metadata = verify_model_uri(model_dir)
    except (ModelIntegrityError, FileNotFoundError) as exc:
        return _not_reusing(model_dir, str(exc))
    judged = verdict.read(model_dir, metadata)
    if judged is None:
        return _not_reusing(model_dir, "its test suite never judged it")
    if not judged.passed:
        return _not_reusing(model_dir, judged.describe())
    return True


def _not_reusing(model_dir: str, why: str) -> bool:
    console.print(f"[yellow]warning:[/] not reusing the model in {model_dir}: {why}", highlight=False)
    return False


def _lineage(params: dict[str, object]) -> dict[str, object]:
    root = Path()
    data_version = lineage.data_version(root)
    if not data_version:
        # In a Vertex AI job: the submitter's DVC versions of the inputs (no dvc.lock in the image).
        data_version = envsettings.environment().data_version or {}
    if not data_version and DEFAULT_RAW_DIR.is_dir():
        data_version = {str(DEFAULT_RAW_DIR): lineage.content_version(DEFAULT_RAW_DIR)}
    return {
        "git": lineage.git_info(root),
        "data_version": data_version,
        "params": params,
        "vertex_job": _vertex_job(),
    }


def _vertex_job() -> str | None:
    """`<job id> <console URL>` inside a Vertex AI job (CLOUD_ML_JOB_ID is set by Vertex AI)."""
    environment = envsettings.environment()
    job_id, region, project = environment.vertex_job_id, environment.vertex_region, environment.vertex_project
    if job_id and region and project:
        url = f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/{job_id}/cpu?project={project}"
        return f"{job_id} {url}"
    return job_id


def _print_metrics(reports_dir: str) -> None:
    details_file = storage.join(reports_dir, "details.json")
    if not storage.exists(details_file):
        return
    details = json.loads(storage.read_text(details_file))
    summary = json.loads(storage.read_text(storage.join(reports_dir, "metrics.json")))
    table = Table(
        title=f"Test accuracy {summary['accuracy']:.4f}, loss {summary['loss']:.4f}, ECE {summary['ece']:.4f}"
    )
    for column in ("class", "precision", "recall", "f1"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, scores in details["per_class"].items():
        table.add_row(name, *(f"{scores[k]:.3f}" for k in ("precision", "recall", "f1")))
    out.print(table)
    robustness = Table(title="Robustness: accuracy and unchanged predictions per perturbation")
    for column in ("perturbation", "accuracy", "unchanged", "floor"):
        robustness.add_column(column, justify="left" if column == "perturbation" else "right")
    robustness.add_row("clean", f"{summary['accuracy']:.4f}", "", "")
    for row in details["robustness"]:
        robustness.add_row(
            row["description"], f"{row['accuracy']:.4f}", f"{row['unchanged']:.4f}", f"{row['floor']:.2f}"
        )
    out.print(robustness)
