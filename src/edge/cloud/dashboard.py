"""Omniboard on this machine, reading the team's MongoDB (the URL in Secret Manager or the environment).

The small-team path for central tracking: a managed MongoDB (e.g. Atlas) whose URL `edge setup` stored
in Secret Manager; jobs write runs to it, and `edge experiments dashboard` runs Omniboard locally in
Docker, published on 127.0.0.1 only, so nothing new is exposed on the internet.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import requests

from edge.cloud.errors import CloudError

OMNIBOARD_IMAGE = "vivekratnavel/omniboard:latest"
OMNIBOARD_PORT = 9000  # inside the container
START_TIMEOUT = 60.0


def tracking_url_from_secret(secret_version: str) -> str:
    """The MongoDB URL in Secret Manager (`projects/P/secrets/S/versions/latest`)."""
    from google.api_core import exceptions

    from edge.cloud.clients import read_secret

    try:
        return read_secret(secret_version)
    except exceptions.NotFound:
        raise CloudError(
            f"{secret_version} holds no tracking URL: run `EDGE_TRACKING_URL=... edge setup` first"
        ) from None


def start_omniboard(url: str, port: int, image: str = OMNIBOARD_IMAGE, client: Any | None = None) -> Any:
    """Run Omniboard on 127.0.0.1:`port` against `url`; return the container (stop it when done)."""
    import docker
    import docker.errors

    from edge.cloud import images

    client = client or images.engine()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(image)
        except docker.errors.APIError as exc:
            raise CloudError(
                f"cannot pull {image} ({exc.explanation or exc}): pull it where Docker Hub is reachable "
                "(`docker pull vivekratnavel/omniboard`), or pass --image with a copy you have"
            ) from None
    # The URL goes in the container's environment only (it holds the password): never on a command line.
    return client.containers.run(
        image,
        environment={"MONGO_URI": url},
        ports={f"{OMNIBOARD_PORT}/tcp": ("127.0.0.1", port)},
        name=f"edge-omniboard-{secrets.token_hex(3)}",
        detach=True,
        auto_remove=True,
    )


def wait_until_up(port: int, container: Any, timeout: float = START_TIMEOUT) -> str:
    """Wait for Omniboard to answer; its URL."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return url
        except requests.RequestException:
            pass
        container.reload()
        if container.status == "exited":
            raise CloudError(f"Omniboard stopped: {container.logs(tail=5).decode(errors='replace')}")
        time.sleep(0.5)
    raise CloudError(f"Omniboard did not answer on {url} within {timeout:.0f} s")
