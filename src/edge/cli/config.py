"""`edge config`: write edge.yaml with a wizard, or with flags and environment variables (CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.prompt import Confirm, Prompt
from rich.syntax import Syntax

from edge.cli.common import console, fail, out
from edge.cloud import settings as cfg

app = typer.Typer(
    help="Configure the Google Cloud project Edge uses (edge.yaml).",
    invoke_without_command=True,
)

FileOpt = Annotated[
    Path | None, typer.Option("--file", envvar=cfg.CONFIG_ENV, help="The settings file (default edge.yaml).")
]


def _opt(help_text: str, env: str) -> Any:
    return typer.Option(help=help_text, envvar=env, show_default=False)


@app.callback()
def config(
    ctx: typer.Context,
    project: Annotated[str | None, _opt("Google Cloud project id.", "EDGE_PROJECT")] = None,
    region: Annotated[
        str | None, _opt("Region for Vertex AI, the bucket and the registry.", "EDGE_REGION")
    ] = None,
    bucket: Annotated[
        str | None, _opt("Cloud Storage bucket (default <project>-edge).", "EDGE_BUCKET")
    ] = None,
    repository: Annotated[str | None, _opt("Artifact Registry Docker repository.", "EDGE_REPOSITORY")] = None,
    service_account: Annotated[
        str | None, _opt("Service account id for jobs.", "EDGE_SERVICE_ACCOUNT")
    ] = None,
    machine_type: Annotated[str | None, _opt("Machine type for training.", "EDGE_MACHINE_TYPE")] = None,
    accelerator_type: Annotated[
        str | None, _opt("GPU for training (e.g. NVIDIA_TESLA_T4), or none.", "EDGE_ACCELERATOR_TYPE")
    ] = None,
    accelerator_count: Annotated[int | None, _opt("How many GPUs.", "EDGE_ACCELERATOR_COUNT")] = None,
    train_on: Annotated[
        str | None, _opt("Where `edge pipeline train` trains: local or vertex.", "EDGE_TRAIN_ON")
    ] = None,
    tracking_secret: Annotated[
        str | None, _opt("Secret Manager secret holding the MongoDB URL.", "EDGE_TRACKING_SECRET_NAME")
    ] = None,
    endpoint_name: Annotated[str | None, _opt("Vertex AI endpoint name.", "EDGE_ENDPOINT_NAME")] = None,
    non_interactive: Annotated[
        bool, typer.Option("--non-interactive", "-y", help="Ask nothing: flags, environment and defaults.")
    ] = False,
    file: FileOpt = None,
) -> None:
    """Write edge.yaml: ask for each setting (current value or default offered), or take them from flags.

    Endpoint overrides (Private Service Connect, local stand-ins) come from EDGE_<API>_ENDPOINT,
    EDGE_REGISTRY and EDGE_CREDENTIALS when Edge runs (they are not written to the file), or from an
    `endpoints:` block edited in the file.
    """
    if ctx.invoked_subcommand is not None:
        return
    path = cfg.config_path(file)
    current = _current(path)
    given = {
        "project": project,
        "region": region,
        "bucket": bucket,
        "repository": repository,
        "service_account": service_account,
        "machine_type": machine_type,
        "accelerator_type": accelerator_type,
        "accelerator_count": accelerator_count,
        "train_on": train_on,
        "tracking_secret": tracking_secret,
        "endpoint_name": endpoint_name,
    }
    # EDGE_<API>_ENDPOINT and the like stay in the environment: edge.yaml is committed, and a local
    # stand-in's address or `credentials: anonymous` must not reach other people's checkouts or CI.
    values = {**current, **{k: v for k, v in given.items() if v is not None}}
    if not non_interactive:
        values = _ask(values, asked={k for k, v in given.items() if v is None})
    if not values.get("bucket") and values.get("project"):
        values["bucket"] = f"{values['project']}-edge"
    try:
        settings = cfg.validate(values, "settings")
    except cfg.SettingsError as exc:
        fail(f"{exc}\nnothing written to {path}")
        return
    saved = cfg.save(settings, path)
    console.print(f"Wrote {saved}. Next: `edge setup --dry-run` to see what it would create.")


@app.command()
def show(file: FileOpt = None) -> None:
    """Print edge.yaml as Edge reads it (with the endpoint overrides from the environment)."""
    try:
        settings = cfg.load(file)
    except cfg.SettingsError as exc:
        fail(str(exc))
        return
    out.print(Syntax(settings.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))


def _current(path: Path) -> dict[str, Any]:
    """The settings already in the file, to offer as defaults; an unreadable file offers nothing."""
    import yaml

    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _ask(values: dict[str, Any], asked: set[str]) -> dict[str, Any]:
    """Prompt for each setting not given as a flag, re-asking until the value is valid."""
    defaults = cfg.Settings.model_fields
    console.print("[bold]Edge cloud settings[/] (Enter keeps the value in brackets)")
    order = [
        ("project", "Google Cloud project id", None),
        ("region", "Region", cfg.REGIONS[:8]),
        ("bucket", "Cloud Storage bucket", None),
        ("repository", "Artifact Registry repository", None),
        ("service_account", "Service account for jobs", None),
        ("machine_type", "Training machine type", ("n1-standard-4", "n1-standard-8", "e2-standard-4")),
        ("accelerator_type", "GPU (none for CPU)", ("none", *cfg.ACCELERATORS[:3])),
        ("tracking_secret", "Secret holding the MongoDB tracking URL", None),
        ("endpoint_name", "Vertex AI endpoint name", None),
    ]
    for key, label, choices in order:
        if key not in asked:
            continue
        default = values.get(key)
        if default is None and key == "bucket" and values.get("project"):
            default = f"{values['project']}-edge"
        if default is None:
            field_default = defaults[key].default
            default = None if field_default is Ellipsis or field_default is None else field_default
        while True:
            if choices:
                console.print(f"  e.g. {', '.join(choices)}", style="dim")
            answer = Prompt.ask(label, default=str(default) if default is not None else None, console=console)
            error = cfg.field_error(key, answer or "")
            if not error:
                values[key] = answer
                break
            console.print(f"[red]{error}[/]")
    if values.get("accelerator_type") not in (None, "none", "") and "accelerator_count" in asked:
        values["accelerator_count"] = int(Prompt.ask("How many GPUs", default="1", console=console))
    if "train_on" in asked:
        values["train_on"] = (
            "vertex"
            if Confirm.ask("Train on Vertex AI in `dvc repro`?", default=False, console=console)
            else "local"
        )
    return values
