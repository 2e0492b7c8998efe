"""`edge model`: the release gate, and the model's entry in the Vertex AI Model Registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edge import release_gate, storage
from edge.cli.common import cloud_errors, console, fail, out
from edge.pipeline import Params, load_params, score_on_test

app = typer.Typer(help="Gate a model against production and register it in Vertex AI.", no_args_is_help=True)

NO_PRODUCTION = "none"
FROM_REGISTRY = "registry"


@app.command("gate")
def gate_command(
    production: Annotated[
        str,
        typer.Option(
            help="The production model to compare with: a model directory (local or gs://), "
            f"'{FROM_REGISTRY}' (the version aliased production in Vertex AI), or "
            f"'{NO_PRODUCTION}' for the very first release (floors only).",
        ),
    ],
    candidate: Annotated[str, typer.Option(help="The candidate model directory (local or gs://).")] = (
        "models"
    ),
    prepared_dir: Annotated[str, typer.Option(help="The prepared splits; the test split is used.")] = (
        "data/prepared"
    ),
    params: Annotated[Path, typer.Option("--params", help="The experiment settings file.")] = Path(
        "params.yaml"
    ),
    report_dir: Annotated[str, typer.Option(help="Where to write gate.md and gate.json.")] = "reports/gate",
) -> None:
    """Compare the candidate with production on the same test split; exit 1 when the gate fails."""
    with cloud_errors():
        settings = load_params(params)
        production_dir = _production_dir(production)
        report = run_gate(candidate, production_dir, prepared_dir, settings)
        storage.makedirs(report_dir)
        storage.write_text(storage.join(report_dir, release_gate.REPORT_JSON), report.to_json())
        storage.write_text(storage.join(report_dir, release_gate.REPORT_MARKDOWN), report.to_markdown())
    out.print(report.to_markdown(), markup=False, highlight=False)
    if not report.passed:
        names = ", ".join(c.name for c in report.failures())
        fail(f"release gate failed ({names}); see {storage.join(report_dir, release_gate.REPORT_MARKDOWN)}")
    console.print(f"Release gate passed; report in {report_dir}.")


def run_gate(
    candidate_dir: str, production_dir: str | None, prepared_dir: str, settings: Params
) -> release_gate.GateReport:
    """Score both models on the test split of `prepared_dir` and judge the candidate."""
    from edge.model import read_metadata

    test, candidate_eval = score_on_test(prepared_dir, candidate_dir)
    candidate = release_gate.Scored.of(_identity(candidate_dir, read_metadata(candidate_dir)), candidate_eval)
    production = None
    if production_dir is not None:
        _, production_eval = score_on_test(prepared_dir, production_dir)
        production = release_gate.Scored.of(
            _identity(production_dir, read_metadata(production_dir)), production_eval
        )
    test_file = storage.join(storage.resolve_dir(prepared_dir), "test.npz")
    split = release_gate.split_identity(storage.read_bytes(test_file), len(test.labels))
    floors = release_gate.Floors(settings.evaluate.min_accuracy, settings.evaluate.min_class_recall)
    return release_gate.judge(candidate, production, settings.gate, floors, split)


def _identity(model_dir: str, metadata: dict[str, Any]) -> dict[str, Any]:
    from edge.model import read_run

    run = read_run(model_dir, metadata) or {}
    return {
        "dir": model_dir,
        "version": metadata.get("version"),
        "tracking_run_id": run.get("tracking_run_id"),
    }


@app.command()
def register(
    image: Annotated[
        str,
        typer.Option(
            envvar="EDGE_SERVING_IMAGE",
            help="The trainer image by digest (REGISTRY/trainer@sha256:...), which serves the model.",
        ),
    ],
    model_dir: Annotated[str, typer.Option(help="The trained model (local or gs://).")] = "models",
    alias: Annotated[
        list[str] | None, typer.Option(help="Aliases to give this version [default: candidate].")
    ] = None,
) -> None:
    """Register the model as a new version in the Vertex AI Model Registry, with its lineage."""
    from edge.cloud.registry import CANDIDATE

    with cloud_errors():
        registry = _registry()
        version = registry.register(model_dir, image, tuple(alias or [CANDIDATE]))
    out.print(f"{version.versioned_name} aliases={','.join(version.aliases)}", highlight=False)
    for key, value in sorted(version.labels.items()):
        console.print(f"  {key}: {value}", highlight=False)


def _registry() -> Any:
    from edge.cloud import settings as cfg
    from edge.cloud.clients import Clients
    from edge.cloud.registry import Registry

    return Registry(Clients(cfg.load()), progress=lambda m: console.print(m, highlight=False))


def _production_dir(production: str) -> str | None:
    if production == NO_PRODUCTION:
        return None
    if production != FROM_REGISTRY:
        return production
    version = _registry().production()
    if version is None:
        console.print("No version is in production yet: the candidate is judged on the floors only.")
        return None
    console.print(f"Production is version {version.version_id}, from {version.artifact_uri}.")
    return str(version.artifact_uri)
