"""`edge setup`: provision the Google Cloud project edge.yaml names; plan first, then apply."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer

from edge import envsettings
from edge.cli.common import console, friendly_errors, out
from edge.cloud import settings as cfg

if TYPE_CHECKING:
    from edge.cloud.setup import Plan, Setup, Step

TRACKING_URL_ENV = "EDGE_TRACKING_URL"


def setup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    tracking_url_stdin: Annotated[
        bool,
        typer.Option(
            "--tracking-url-stdin",
            help=f"Read the MongoDB tracking URL from stdin (else ${TRACKING_URL_ENV}).",
        ),
    ] = False,
    file: Annotated[
        Path | None,
        typer.Option("--file", envvar=cfg.CONFIG_ENV, help="The settings file (default edge.yaml)."),
    ] = None,
) -> None:
    """Enable the APIs, create the bucket, registry, service account, tracking secret and DVC remote.

    Reads what exists, prints the plan, then applies it; running it again changes nothing. The
    tracking URL goes to Secret Manager only: it is never printed, logged or written to disk.
    """
    from edge.cloud.setup import Setup

    with friendly_errors():
        settings = cfg.load(file)
        tracking_url = _tracking_url(tracking_url_stdin)
        provisioning = Setup(settings, tracking_url=tracking_url, notify=_line)
        with console.status(f"Reading project {settings.project}..."):
            plan = provisioning.plan()
        _show(settings.project, settings.region, plan)
        if not plan.changes:
            console.print("Nothing to do: the project is set up as edge.yaml says.")
            return
        if dry_run:
            later = " (and plan what the `?` resources need once their APIs answer)" if plan.unread else ""
            console.print(
                f"Dry run: nothing changed. `edge setup` would make {len(plan.changes) - plan.unread_count} "
                f"change(s){later}."
            )
            return
        applied = _apply(provisioning, plan)
        if plan.unread:
            # What sits behind the APIs just enabled is read now, once they answer.
            console.print("Reading what the APIs just enabled hold (waiting until they answer)...")
            plan = provisioning.plan()
            _show(settings.project, settings.region, plan)
            applied += _apply(provisioning, plan)
    console.print(f"Done: {applied} change(s) applied. Commit .dvc/config if it changed.")


def _line(text: str) -> None:
    """One progress line, whole: CI logs show it as it is, however narrow the terminal."""
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def _show(project: str, region: str, plan: Plan) -> None:
    # Terraform's notation: `+` a change to make, `=` already as wanted, `?` not readable yet.
    out.print(f"Project {project} ({region}):", highlight=False)
    for step in plan.steps:
        if step.unread:
            out.print(f"  [yellow]?[/] {step.resource}: {step.found}", highlight=False, soft_wrap=True)
        elif step.action:
            out.print(
                f"  [green]+[/] {step.resource}: {step.found} -> {step.action}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            out.print(f"  [dim]=[/] {step.resource}: {step.found}", highlight=False, soft_wrap=True)


def _apply(provisioning: Setup, plan: Plan) -> int:
    """Apply the plan's changes (a line per step); how many were applied."""
    steps = [step for step in plan.changes if not step.unread]
    done = 0

    def progress(step: Step) -> None:
        nonlocal done
        done += 1
        _line(f"[{done}/{len(steps)}] {step.action}: {step.resource}")

    provisioning.apply(plan, progress)
    return done


def _tracking_url(from_stdin: bool) -> str | None:
    if from_stdin:
        value = sys.stdin.readline().strip()
        if not value:
            raise ValueError("--tracking-url-stdin: stdin held no URL")
    else:
        value = envsettings.environment().tracking_url or ""
    if value and urlsplit(value).scheme not in ("mongodb", "mongodb+srv"):
        # Never echo it: a mistyped URL still holds the password.
        raise ValueError(
            "the tracking URL must be mongodb://user:password@host:port/database (value not shown)"
        )
    return value or None
