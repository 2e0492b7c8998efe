"""`edge experiments dashboard`: the tracking URL from Secret Manager (stand-in), Omniboard in Docker.

The Omniboard image cannot be pulled here (no Docker Hub), so what runs is the path up to starting it:
the secret read through the stand-in, the clear error when the image is missing, no password shown.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge.cli import app
from tests.cloud_env import PROJECT
from tests.standin.cloud import LocalCloud

PASSWORD = "dash-pw-0042"


# No skipif of its own: docker_engine skips on a laptop without an engine and fails in CI.
@pytest.mark.containers
def test_dashboard_reads_the_secret_and_explains_a_missing_image(
    docker_engine: object, cloud_env: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docker_engine starts dockerd where none runs (as in CI): the dashboard asks the engine.
    secret = f"projects/{PROJECT}/secrets/edge-tracking-url"
    cloud_env.secrets.secrets[secret] = {"name": secret}
    cloud_env.secrets.versions[secret] = [f"mongodb://reader:{PASSWORD}@127.0.0.1:1/edge".encode()]
    monkeypatch.delenv("EDGE_TRACKING_URL", raising=False)
    # A registry on 127.0.0.1 that is not there: nothing leaves this machine.
    image = "127.0.0.1:1/omniboard:missing"
    done = CliRunner().invoke(app, ["experiments", "dashboard", "--image", image, "--no-browser"])
    assert done.exit_code == 1
    assert f"cannot pull {image}" in done.output
    assert PASSWORD not in done.output
    (access,) = cloud_env.log.find(service="secretmanager", path="/versions/latest:access")
    assert access.method == "GET"


def test_dashboard_without_a_secret_says_run_setup(
    cloud_env: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGE_TRACKING_URL", raising=False)
    done = CliRunner().invoke(app, ["experiments", "dashboard", "--no-browser"])
    assert done.exit_code == 1
    assert "holds no tracking URL: run `EDGE_TRACKING_URL=... edge setup` first" in done.output
