"""edge.cloud.clients: one setting points every client at another endpoint; no credentials, one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cloud import settings as cfg
from edge.cloud.clients import Clients
from edge.cloud.errors import CloudError
from tests.standin.cloud import LocalCloud


def test_no_application_default_credentials_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("HOME", str(tmp_path))
    clients = Clients(cfg.validate({"project": "edge-test-project", "bucket": "b-edge"}))
    with pytest.raises(CloudError, match="gcloud auth application-default login"):
        clients.secret_manager()


def test_every_client_goes_to_its_configured_endpoint(cloud_env: LocalCloud) -> None:
    clients = Clients(cfg.load())
    project = "projects/edge-test-project"
    clients.secret_manager().create_secret(
        request={"parent": project, "secret_id": "s1", "secret": {"replication": {"automatic": {}}}}
    )
    list(clients.service_usage().list_services(request={"parent": project, "filter": "state:ENABLED"}))
    clients.projects().get_iam_policy(request={"resource": project})
    assert clients.iam().get_service_account("edge-test-project", "nobody@x.iam.gserviceaccount.com") is None
    with pytest.raises(Exception, match="Requested entity was not found"):
        clients.artifact_registry().get_repository(
            name="projects/edge-test-project/locations/europe-west2/repositories/edge"
        )
    served = {entry.service for entry in cloud_env.log}
    assert served == {"secretmanager", "serviceusage", "resourcemanager", "iam", "artifactregistry"}
    # The application-default credentials' token went with every call, and nothing else: no token
    # refresh went anywhere, and each stand-in took the caller for the project's owner.
    assert all(
        entry.headers.get("authorization", "").startswith("Bearer ya29.standin-") for entry in cloud_env.log
    )
    assert {entry.principal for entry in cloud_env.log} == {cloud_env.owner}


def test_the_registry_token_is_the_credentials_every_client_uses(cloud_env: LocalCloud) -> None:
    from edge import containers as images

    # The application-default credentials hold a token the stand-ins issued, valid for hours: it
    # goes as it is, with no refresh at Google's token endpoint (unreachable here).
    auth = images.registry_auth("europe-west2-docker.pkg.dev/edge-test-project/edge")
    assert auth is not None and auth["username"] == "oauth2accesstoken"
    assert cloud_env.access.tokens[auth["password"]] == cloud_env.owner


def test_no_registry_token_from_anonymous_credentials(
    cloud_env: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge import containers as images

    monkeypatch.setenv("EDGE_CREDENTIALS", "anonymous")
    with pytest.raises(images.ImageError, match="EDGE_CREDENTIALS=anonymous sends no credentials"):
        images.registry_auth("europe-west2-docker.pkg.dev/edge-test-project/edge")
