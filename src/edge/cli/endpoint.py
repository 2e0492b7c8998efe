"""`edge deploy` and `edge endpoint`: release a registered model to the Vertex AI endpoint, and watch it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edge import storage
from edge.cli.common import cloud_errors, console, fail, out, waiting

app = typer.Typer(help="The Vertex AI endpoint: status, a prediction, a rollback.", no_args_is_help=True)


def _release(machine_type: str | None = None) -> Any:
    from edge.cloud import settings as cfg
    from edge.cloud.clients import Clients
    from edge.cloud.release import DEFAULT_MACHINE_TYPE, Release

    return Release(
        Clients(cfg.load()),
        progress=lambda m: console.print(m, highlight=False),
        machine_type=machine_type or DEFAULT_MACHINE_TYPE,
        waiting=waiting,
    )


def check_gate_report(path: str, model_version: str, registered: Callable[[str], bool]) -> None:
    """Refuse a candidate without a passing gate report that names this very model.

    `registered(model)` tells whether a model is in the registry, to say what to do when the gate
    judged a model that was never registered.
    """
    if not storage.exists(path):
        fail(f"no gate report at {path}: run `edge model gate` first (a release needs a passing gate)")
    report = json.loads(storage.read_text(path))
    gated = str(((report.get("candidate") or {}).get("model") or {}).get("version") or "")
    if gated and gated != model_version and report.get("passed") and not registered(gated):
        fail(
            f"model {gated} passed the gate ({path}) but is not registered; the registry's candidate is "
            f"model {model_version}: run `edge model register` to make {gated} the candidate, then "
            "`edge deploy`"
        )
    if gated != model_version:
        fail(
            f"the gate report {path} is about model {gated or '?'}, not the candidate {model_version}: "
            "run `edge model gate` on this model"
        )
    if not report.get("passed"):
        fail(f"model {model_version} failed the release gate ({path}): it will not be deployed")


def deploy(
    version: Annotated[
        str, typer.Option(help="The registry version (id or alias) to release.")
    ] = "candidate",
    gate_report: Annotated[
        str, typer.Option(help="The passing report of `edge model gate` for this model.")
    ] = "reports/gate/gate.json",
    canary: Annotated[int, typer.Option(help="Traffic share (%) of the candidate while it is tested.")] = 10,
    prepared_dir: Annotated[str, typer.Option(help="The prepared splits: smoke images come from test.")] = (
        "data/prepared"
    ),
    smoke_images: Annotated[int, typer.Option(help="Test images the candidate must classify.", min=1)] = 10,
    min_correct: Annotated[float, typer.Option(help="Share of them it must get right.")] = 0.8,
    max_latency_ms: Annotated[float, typer.Option(help="Highest p95 latency accepted (ms).")] = 2000.0,
    machine_type: Annotated[
        str | None, typer.Option(help="Serving machine type [default: n1-standard-2].")
    ] = None,
    log_to_bigquery: Annotated[
        str | None,
        typer.Option(help="Log requests and responses to this BigQuery table (bq://project.dataset.table)."),
    ] = None,
) -> None:
    """Deploy a registered version with a canary, smoke-test it, then promote it or roll back."""
    from edge.cloud.release import SmokePolicy
    from edge.cloud.release import smoke_images as pick_images

    with cloud_errors():
        release = _release(machine_type)
        candidate = release.registry.get(version)
        if candidate is None:
            _nothing_to_release(release, version, gate_report)
            return
        check_gate_report(
            gate_report,
            str(candidate.labels.get("model_version", "")),
            lambda model: release.registry.find_by_model_version(model) is not None,
        )
        images = pick_images(storage.read_bytes(storage.join(prepared_dir, "test.npz")), smoke_images)
        report = release.deploy(
            candidate,
            images,
            canary_percent=canary,
            policy=SmokePolicy(smoke_images, min_correct, max_latency_ms),
            bigquery_table=log_to_bigquery,
        )
    name = release.clients.settings.endpoint_name
    done = f"Version {candidate.version_id} serves all the traffic of {name}"
    out.print(done + (f" ({report.summary()})." if report else "."), highlight=False)


def _nothing_to_release(release: Any, version: str, gate_report: str) -> None:
    """No version `version`: say why, and what to do; exit 0 only when the last release is done."""
    from edge.cloud.registry import CANDIDATE, PRODUCTION

    if version != CANDIDATE:
        fail(f"no registered version {version!r}: run `edge model register` first")
    report = json.loads(storage.read_text(gate_report)) if storage.exists(gate_report) else {}
    gated = str(((report.get("candidate") or {}).get("model") or {}).get("version") or "")
    if gated and report.get("passed") and release.registry.find_by_model_version(gated) is None:
        fail(
            f"model {gated} passed the gate ({gate_report}) but is not registered: run `edge model "
            "register` to make it the candidate, then `edge deploy`"
        )
    production = release.registry.get(PRODUCTION)
    if production is None:
        fail("no registered version 'candidate': run `edge model register` first")
    # Promotion takes `candidate` away: running `edge deploy` again after a release changes nothing.
    out.print(
        f"Nothing to release: no version is a candidate; version {production.version_id} is in "
        "production. `edge model register` makes a new model the candidate.",
        highlight=False,
    )


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False) -> None:
    """Show the deployed versions, their traffic split and the lineage of each."""
    with cloud_errors():
        state = _release().state()
    if as_json:
        out.print_json(json.dumps(state))
        return
    if state["endpoint"] is None:
        out.print("No endpoint yet: `edge deploy` creates it.")
        return
    table = Table(title=f"{state['display_name']} ({state['endpoint']})")
    for column in ("version", "traffic", "aliases", "git commit", "data", "run", "image digest"):
        # Aliases one per line, never cut: they are what `edge deploy` and a rollback go by.
        table.add_column(column, no_wrap=column == "aliases", min_width=10 if column == "aliases" else None)
    for dm in state["deployed"]:
        labels = dm["labels"]
        table.add_row(
            dm["version"],
            f"{dm['traffic']}%",
            "\n".join(sorted(dm["aliases"])),
            labels.get("git_commit", "")[:12],
            labels.get("data_version", "")[:12],
            labels.get("run_id", "")[:12],
            labels.get("image_digest", "")[:12],
        )
    out.print(table)


@app.command()
def predict(image: Annotated[Path, typer.Argument(help="A picture of a garment (PNG, JPEG...).")]) -> None:
    """Classify an image through the endpoint, as a client would."""
    from PIL import Image

    try:
        picture = Image.open(image).convert("L").resize((28, 28))
    except (OSError, ValueError) as exc:
        fail(f"{image} is not an image we can read: {exc}")
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    with cloud_errors():
        response = _release().predict(buffer.getvalue())
    first = response.predictions[0]
    out.print(
        f"{first['label']} ({float(first['confidence']):.1%}) from version {response.model_version_id}",
        highlight=False,
    )


@app.command()
def rollback() -> None:
    """End a canary, or put the previous production version back."""
    with cloud_errors():
        message = _release().rollback()
    out.print(f"Rolled back: {message}.", highlight=False)
