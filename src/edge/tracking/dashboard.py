"""Omniboard on this machine, reading the team's MongoDB: `edge experiments dashboard`.

The small-team path for central tracking: a managed MongoDB (e.g. Atlas) whose URL `edge setup` stored
in Secret Manager; jobs write runs to it, and Omniboard runs locally in Docker, published on 127.0.0.1
only, so nothing new is exposed on the internet. It is a view of the tracked runs, so it lives with
tracking; the container itself is started through `edge.containers`, the one module that speaks to
Docker, and the URL is read from Secret Manager by `edge.cloud.clients`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import requests

from edge import containers

OMNIBOARD_IMAGE = "vivekratnavel/omniboard:latest"
OMNIBOARD_PORT = 9000  # inside the container
START_TIMEOUT = 60.0


class DashboardError(Exception):
    """Omniboard could not be started or did not answer; the message says what to do."""


def start_omniboard(url: str, port: int, image: str = OMNIBOARD_IMAGE, client: Any | None = None) -> Any:
    """Run Omniboard on 127.0.0.1:`port` against `url`; return the container (stop it when done)."""
    client = client or containers.engine()
    try:
        containers.pull_if_missing(image, client)
    except containers.ImageError as exc:
        raise DashboardError(
            f"{exc}: pull it where Docker Hub is reachable (`docker pull vivekratnavel/omniboard`), "
            "or pass --image with a copy you have"
        ) from None
    # The URL goes in the container's environment only (it holds the password): never on a command line.
    return containers.run_on_localhost(
        image,
        port=port,
        container_port=OMNIBOARD_PORT,
        environment={"MONGO_URI": url},
        name=f"edge-omniboard-{secrets.token_hex(3)}",
        client=client,
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
            raise DashboardError(f"Omniboard stopped: {container.logs(tail=5).decode(errors='replace')}")
        time.sleep(0.5)
    raise DashboardError(f"Omniboard did not answer on {url} within {timeout:.0f} s")
