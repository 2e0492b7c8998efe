"""`edge pipeline train` reading the tracking URL from Secret Manager: each failure says what and why.

The errors are google-api-core's own types, as the official client raises them; the two end-to-end
cases go through the real Secret Manager client to a local stand-in and to a closed port.
"""

from __future__ import annotations

import os

import pytest
import requests
from google.api_core import exceptions
from google.auth.exceptions import TransportError

from edge.cli.pipeline import _tracking_url_from_secret, secret_problem
from tests.standin.cloud import LocalCloud

VERSION = "projects/edge-test-project/secrets/edge-tracking/versions/latest"
NETWORK = "Secret Manager could not be reached; check the network and the endpoint, then retry"


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            exceptions.PermissionDenied(
                f"Permission 'secretmanager.versions.access' denied for resource '{VERSION}'"
            ),
            "no permission; check that the job's service account has roles/secretmanager.secretAccessor on "
            "the secret and that the Secret Manager API is enabled (`edge setup` grants both) (403 "
            f"Permission 'secretmanager.versions.access' denied for resource '{VERSION}')",
        ),
        (
            exceptions.NotFound("Secret [projects/1/secrets/edge-tracking] not found or has no versions."),
            "no such secret or version; check EDGE_TRACKING_SECRET (projects/PROJECT/secrets/NAME/versions/"
            "VERSION) and tracking_secret in edge.yaml, or run `edge setup` to create it (404 Secret "
            "[projects/1/secrets/edge-tracking] not found or has no versions.)",
        ),
        (
            exceptions.FailedPrecondition(f"Secret Version [{VERSION}] is in DISABLED state."),
            "the version cannot be read (disabled, destroyed or misnamed); enable it or add a new version "
            f"(400 Secret Version [{VERSION}] is in DISABLED state.)",
        ),
        (
            exceptions.Unauthenticated("Request had invalid authentication credentials."),
            "the credentials were refused; check the job's service account (or your `gcloud auth "
            "application-default login`) (401 Request had invalid authentication credentials.)",
        ),
        (
            exceptions.ServiceUnavailable("The service is currently unavailable."),
            f"{NETWORK} (ServiceUnavailable: The service is currently unavailable.)",
        ),
        (
            exceptions.DeadlineExceeded("Deadline Exceeded"),
            f"{NETWORK} (DeadlineExceeded: Deadline Exceeded)",
        ),
        (
            exceptions.RetryError("Timeout of 20.0s exceeded", cause=None),
            f"{NETWORK} (RetryError: Timeout of 20.0s exceeded)",
        ),
        (
            requests.ConnectionError("Failed to establish a new connection"),
            f"{NETWORK} (ConnectionError: Failed to establish a new connection)",
        ),
        (
            TransportError("Failed to retrieve an access token"),
            f"{NETWORK} (TransportError: Failed to retrieve an access token)",
        ),
    ],
)
def test_each_failure_names_what_went_wrong_and_what_to_check(error: Exception, said: str) -> None:
    assert secret_problem(error) == said


def _warning(capsys: pytest.CaptureFixture[str]) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_a_missing_secret_through_the_real_client(
    cloud_env: LocalCloud, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDGE_TRACKING_URL", raising=False)
    monkeypatch.setenv("EDGE_TRACKING_SECRET", VERSION)
    _tracking_url_from_secret()
    said = _warning(capsys)
    assert said.startswith(
        f"warning: the tracking URL could not be read from {VERSION}: no such secret or version; check "
        "EDGE_TRACKING_SECRET"
    ), said
    assert said.endswith(
        "The run is recorded in the journal only; once the URL can be read, `edge experiments sync` "
        "sends it to MongoDB."
    ), said
    assert "EDGE_TRACKING_URL" not in os.environ


def test_an_unreachable_secret_manager_through_the_real_client(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("EDGE_TRACKING_URL", raising=False)
    monkeypatch.setenv("EDGE_TRACKING_SECRET", VERSION)
    monkeypatch.setenv("EDGE_SECRETMANAGER_ENDPOINT", "http://127.0.0.1:1")  # nothing listens there
    monkeypatch.setenv("EDGE_CREDENTIALS", "anonymous")
    _tracking_url_from_secret()
    said = _warning(capsys)
    assert f"from {VERSION}: {NETWORK} (ConnectionError: " in said, said
    assert "`edge experiments sync` sends it to MongoDB." in said
