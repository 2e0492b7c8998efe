"""`edge pipeline`: the training pipeline's stages, the very commands DVC, containers and Vertex run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edge import lineage, storage, tracking
from edge.cli.common import console, friendly_errors, out
from edge.data import DEFAULT_RAW_DIR
from edge.model import ModelIntegrityError, verify_model_uri
from edge.pipeline import evaluate_stage, load_params, prepare_stage

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
    params: ParamsOpt = Path("params.yaml"),
    prepared_dir: PreparedOpt = DEFAULT_PREPARED,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    reports_dir: ReportsOpt = f"{DEFAULT_REPORTS}/train",
) -> None:
    """Train the CNN; write the .keras model, the serving export, metadata, history and metrics."""
    with friendly_errors():
        settings = load_params(params)
        # A tracked run: recorded with its lineage, metrics, test scores and artifacts (edge.tracking).
        result, metadata = tracking.run_training(
            prepared_dir, model_dir, reports_dir, settings, _lineage(settings.as_dict())
        )
    console.print(
        f"Trained {len(result.history)} epoch(s) in {result.seconds:.0f} s: validation accuracy "
        f"{result.final['val_accuracy']:.4f}; model {metadata['version']} saved to {model_dir}."
    )


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
            evaluation = evaluate_stage(prepared_dir, model_dir, reports_dir, gate)
        finally:
            _print_metrics(reports_dir)
    console.print(f"Test accuracy {evaluation.accuracy:.4f} passes the gate of {gate.min_accuracy:.4f}.")


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    seed: Annotated[bool, typer.Option("--seed", help="Seed the raw data first when it is missing.")] = False,
    raw_dir: RawDirOpt = str(DEFAULT_RAW_DIR),
    prepared_dir: PreparedOpt = DEFAULT_PREPARED,
    model_dir: ModelDirOpt = DEFAULT_MODEL_DIR,
    reports_dir: ReportsOpt = DEFAULT_REPORTS,
    skip_if_trained: Annotated[
        bool, typer.Option(help="Do nothing when the model directory already holds a model.")
    ] = False,
) -> None:
    """Run prepare, train and evaluate in one process, without DVC (containers, Vertex AI)."""
    if skip_if_trained and _holds_complete_model(model_dir):
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
    train(params, prepared_dir, model_dir, f"{reports_dir}/train")
    evaluate(params, prepared_dir, model_dir, f"{reports_dir}/evaluate")


def _holds_complete_model(model_dir: str) -> bool:
    """Tell whether `model_dir` holds a complete, unmixed model; say why an existing one is not."""
    if not storage.exists(model_dir):
        return False
    try:
        verify_model_uri(model_dir)
    except (ModelIntegrityError, FileNotFoundError) as exc:
        console.print(f"[yellow]warning:[/] not reusing the model in {model_dir}: {exc}", highlight=False)
        return False
    return True


def _lineage(params: dict[str, object]) -> dict[str, object]:
    root = Path()
    data_version = lineage.data_version(root)
    if not data_version and DEFAULT_RAW_DIR.is_dir():
        data_version = {str(DEFAULT_RAW_DIR): lineage.content_version(DEFAULT_RAW_DIR)}
    return {
        "git": lineage.git_info(root),
        "data_version": data_version,
        "params": params,
        "vertex_job": os.environ.get("CLOUD_ML_JOB_ID"),
    }


def _print_metrics(reports_dir: str) -> None:
    metrics_file = storage.join(reports_dir, "metrics.json")
    if not storage.exists(metrics_file):
        return
    metrics = json.loads(storage.read_text(metrics_file))
    table = Table(
        title=f"Test accuracy {metrics['test']['accuracy']:.4f}, loss {metrics['test']['loss']:.4f}"
    )
    for column in ("class", "precision", "recall", "f1"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, scores in metrics["per_class"].items():
        table.add_row(name, *(f"{scores[k]:.3f}" for k in ("precision", "recall", "f1")))
    out.print(table)
