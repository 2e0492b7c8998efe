"""`edge setup`: provision the Google Cloud project edge.yaml names; plan first, then apply."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from edge.cli.common import console, friendly_errors, out
from edge.cloud import settings as cfg

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
        provisioning = Setup(settings, tracking_url=tracking_url)
        with console.status(f"Reading project {settings.project}..."):
            plan = provisioning.plan()
        # Terraform's notation: `+` a change to make, `=` already as wanted.
        out.print(f"Project {settings.project} ({settings.region}):", highlight=False)
        for step in plan.steps:
            if step.action:
                out.print(
                    f"  [green]+[/] {step.resource}: {step.found} -> {step.action}",
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                out.print(f"  [dim]=[/] {step.resource}: {step.found}", highlight=False, soft_wrap=True)
        if not plan.changes:
            console.print("Nothing to do: the project is set up as edge.yaml says.")
            return
        if dry_run:
            console.print(f"Dry run: nothing changed. `edge setup` would make {len(plan.changes)} change(s).")
            return
        done = 0

        def progress(step: object) -> None:
            nonlocal done
            done += 1
            console.print(f"[{done}/{len(plan.changes)}] {step.action}: {step.resource}")  # type: ignore[attr-defined]

        provisioning.apply(plan, progress)
    console.print(f"Done: {len(plan.changes)} change(s) applied. Commit .dvc/config if it changed.")


def _tracking_url(from_stdin: bool) -> str | None:
    if from_stdin:
        value = sys.stdin.readline().strip()
        if not value:
            raise ValueError("--tracking-url-stdin: stdin held no URL")
    else:
        value = os.environ.get(TRACKING_URL_ENV, "").strip()
    if value and urlsplit(value).scheme not in ("mongodb", "mongodb+srv"):
        # Never echo it: a mistyped URL still holds the password.
        raise ValueError(
            "the tracking URL must be mongodb://user:password@host:port/database (value not shown)"
        )
    return value or None
