"""`edge webapp`: the demo webapp on Cloud Run, asking the Vertex AI endpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from edge.cli.common import cloud_errors, console, fail, out

app = typer.Typer(help="Deploy the demo webapp to Cloud Run.", no_args_is_help=True)


@app.command()
def deploy(
    image: Annotated[
        str,
        typer.Option(
            envvar="EDGE_WEBAPP_IMAGE",
            help="The webapp image by digest (REGISTRY/edge-webapp@sha256:...), from `edge image push`.",
        ),
    ],
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated",
            help="Let anyone on the internet open it (it is private otherwise).",
        ),
    ] = False,
) -> None:
    """Deploy (or update) the webapp on Cloud Run, pointed at the endpoint `edge deploy` serves."""
    from edge.cloud import settings as cfg
    from edge.cloud.clients import Clients
    from edge.cloud.registry import check_image
    from edge.cloud.release import Release
    from edge.cloud.webapp import deploy_webapp

    with cloud_errors():
        check_image(image, "webapp", "deploy")
        clients = Clients(cfg.load())
        endpoint = Release(clients).find_endpoint()
        if endpoint is None:
            fail("no endpoint yet: run `edge deploy` first, the webapp asks it for predictions")
        done = deploy_webapp(
            clients,
            image,
            endpoint.resource_name,
            public=allow_unauthenticated,
            progress=lambda m: console.print(m, highlight=False),
        )
    access = "open to everyone" if done.public else "private (callers need roles/run.invoker)"
    out.print(f"{done.uri}  {access}", highlight=False)
