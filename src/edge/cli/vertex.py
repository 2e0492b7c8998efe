"""`edge pipeline train --on vertex`: the terminal side of a Vertex AI training job.

Shows the job's state while it runs, asks (or is told by a flag) whether Ctrl-C cancels the job, and
ends with the model, reports and run journal where DVC and `edge experiments` expect them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.prompt import Confirm

from edge import envsettings, lineage
from edge.cli.common import console, waiting
from edge.cloud import settings as cfg
from edge.pipeline import load_params
from edge.tracking import observers


def train_on_vertex(
    params: str,
    prepared_dir: str,
    model_dir: str,
    reports_dir: str,
    image: str | None,
    cancel_on_interrupt: bool | None,
    wait_timeout: float | None,
    attach: str | None = None,
) -> None:
    """Run the train stage as a Vertex AI CustomJob (or follow job `attach`) and bring its outputs home."""
    from edge.cloud.errors import CloudError
    from edge.cloud.training import TrainRequest, VertexTraining

    settings = cfg.load()
    # The job runs the same check on the same file: a typo fails here, not minutes later on Vertex.
    load_params(params)
    git = lineage.git_info(Path()) or {}
    if not attach:
        image = image or envsettings.environment().trainer_image or _pushed_trainer(settings)
    request = TrainRequest(
        image=image or "",
        params=Path(params),
        prepared_dir=prepared_dir,
        model_dir=model_dir,
        reports_dir=reports_dir,
        git_commit=git.get("commit"),
        runs_dir=observers.runs_dir(),
        data_version=lineage.data_version(Path()) or None,
    )
    training = VertexTraining(settings)
    if attach:
        handle = training.attach(attach)
        console.print(f"Following job {handle.id} again; its outputs: {handle.output}", highlight=False)
    else:
        with console.status("Checking the bucket..."):
            training.check_bucket()
        with console.status(f"Uploading {prepared_dir} (content-addressed)..."):
            data_uri, data_hash, uploaded = training.upload_data(prepared_dir)
        what = "Uploaded" if uploaded else "Reusing"
        console.print(f"{what} the prepared data: {data_uri}", highlight=False)
        with console.status("Submitting the training job..."):
            handle = training.submit(request, data_uri, data_hash)
    poll = envsettings.environment().vertex_poll_seconds
    try:
        # From here on, Ctrl-C knows which job to cancel.
        console.print(f"Vertex AI job {handle.id}: {handle.console_url}", highlight=False, soft_wrap=True)
        with waiting(f"Job {handle.id}: submitted") as update:
            seen = [""]

            def show(state: str, elapsed: float) -> None:
                update(f"Job {handle.id}: {state}")
                if state != seen[0]:  # each change of state is a line, in a terminal and in CI logs
                    seen[0] = state
                    console.print(f"Job {handle.id}: {state} after {elapsed:.0f} s", highlight=False)

            training.wait(handle, show, timeout=wait_timeout, poll_seconds=poll)
    except KeyboardInterrupt:
        cancel = cancel_on_interrupt
        if cancel is None:
            cancel = sys.stdin.isatty() and Confirm.ask(f"Cancel Vertex AI job {handle.id}?", console=console)
        if cancel:
            training.cancel(handle)
            console.print(f"Cancelled job {handle.id}.")
        else:
            console.print(
                f"Job {handle.id} keeps running: `edge pipeline train --on vertex --attach {handle.id}` "
                f"picks its result up later; follow it at {handle.console_url}, or cancel it with "
                f"`gcloud ai custom-jobs cancel {handle.id} --region {settings.region}`",
                soft_wrap=True,
            )
        raise
    with console.status("Downloading the model, reports and run journal..."):
        imported = training.download(handle, request)
    runs = f"; run {', '.join(imported)} added to {request.runs_dir}" if imported else ""
    console.print(f"Job {handle.id} succeeded: model in {model_dir}, reports in {reports_dir}{runs}.")
    if not imported:
        raise CloudError(f"job {handle.id} left no run journal under {handle.output}/journal")


def _pushed_trainer(settings: cfg.Settings) -> str:
    """The trainer image pushed for this checkout's code, by digest, as the registry reports it.

    The GPU variant when edge.yaml names an accelerator; tagged with the full commit (CI's
    $CIRCLE_SHA1) or the short one, with `-dirty-<hash>` when the images' sources have changes.
    """
    from edge import containers as images
    from edge.cloud.errors import CloudError

    registry = settings.image_registry.rstrip("/")
    service = images.trainer_image_for(settings.accelerator_type)
    state = images.git_state(images.repository_root())
    found = images.find_pushed(service, registry, state.tags)
    if found:
        return found
    raise CloudError(
        f"no {images.image_name(service)} image for {state.tag} pushed to {registry}: run "
        f"`edge image build {service}` and `edge image push {service}`, or pass --image "
        f"<registry>/{images.image_name(service)}@sha256:..."
    )
