"""The one place that builds Google clients: credentials, REST transport and endpoint overrides.

Every other cloud module asks a `Clients` for what it needs, so pointing the whole tool at another
endpoint (Private Service Connect, or a local stand-in on 127.0.0.1) is a setting, not a patch per
call site. REST everywhere: one transport to reason about, and the one a local stand-in can speak.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from edge.cloud.errors import CloudError
from edge.cloud.settings import Endpoints, Settings, env_overrides

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
PUBLIC = {
    "iam": "https://iam.googleapis.com",
    "storage": "https://storage.googleapis.com",
}


class Clients:
    """Google clients for one settings object, built on first use and then reused."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def credentials(self) -> Any:
        """Application-default credentials, or anonymous ones when the settings ask for a stand-in."""
        return credentials_for(self.settings.endpoints)

    def _options(self, api: str) -> dict[str, str]:
        endpoint = self.settings.endpoint(api)
        return {"api_endpoint": endpoint} if endpoint else {}

    def service_usage(self) -> Any:
        from google.cloud import service_usage_v1

        return service_usage_v1.ServiceUsageClient(
            credentials=self.credentials, transport="rest", client_options=self._options("serviceusage")
        )

    def artifact_registry(self) -> Any:
        from google.cloud import artifactregistry_v1

        return artifactregistry_v1.ArtifactRegistryClient(
            credentials=self.credentials, transport="rest", client_options=self._options("artifactregistry")
        )

    def secret_manager(self) -> Any:
        from google.cloud import secretmanager_v1

        return secretmanager_v1.SecretManagerServiceClient(
            credentials=self.credentials, transport="rest", client_options=self._options("secretmanager")
        )

    def projects(self) -> Any:
        from google.cloud import resourcemanager_v3

        return resourcemanager_v3.ProjectsClient(
            credentials=self.credentials, transport="rest", client_options=self._options("resourcemanager")
        )

    def cloud_run(self) -> Any:
        """Cloud Run's services (the webapp's deployment)."""
        from google.cloud import run_v2

        return run_v2.ServicesClient(
            credentials=self.credentials, transport="rest", client_options=self._options("run")
        )

    def storage(self) -> Any:
        """The Cloud Storage client, for managing the bucket itself (objects go through edge.storage)."""
        from google.cloud import storage  # type: ignore[attr-defined]

        return storage.Client(
            project=self.settings.project,
            credentials=self.credentials,
            client_options=self._options("storage"),
        )

    def session(self) -> Any:
        """An HTTP session that sends these credentials, for the few REST calls no client makes."""
        from google.auth.transport.requests import AuthorizedSession

        return AuthorizedSession(self.credentials)  # type: ignore[no-untyped-call]

    def iam(self) -> IamRest:
        """IAM's REST API: its Python client (iam_admin_v1) has no REST transport, only gRPC."""
        return IamRest(self.session(), self.settings.endpoint("iam") or PUBLIC["iam"])

    def aiplatform(self) -> Any:
        """The Vertex AI SDK, initialised for this project (process-wide: the SDK keeps it globally)."""
        from google.cloud import aiplatform

        quiet_sdk_logs()
        aiplatform.init(
            project=self.settings.project,
            location=self.settings.region,
            credentials=self.credentials,
            staging_bucket=self.settings.bucket_uri,
            api_endpoint=self.settings.endpoint("aiplatform"),
            api_transport="rest",
        )
        return aiplatform


def quiet_sdk_logs() -> None:
    """Keep the Vertex AI SDK's INFO lines ("To use this CustomJob in another session:", operation
    names) off the terminal: they go to stdout, which carries only results for scripts, and edge
    prints what matters itself. Its warnings and errors still show."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name == "google.cloud.aiplatform" or name.startswith("google.cloud.aiplatform."):
            logging.getLogger(name).setLevel(logging.WARNING)


def credentials_for(endpoints: Endpoints) -> Any:
    """Application-default credentials, or anonymous ones for local stand-ins."""
    if endpoints.credentials == "anonymous":
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    import google.auth
    import google.auth.exceptions

    try:
        credentials, _project = google.auth.default(scopes=list(SCOPES))
    except google.auth.exceptions.DefaultCredentialsError:
        raise CloudError(
            "no Google credentials found: run `gcloud auth application-default login` (or set "
            "GOOGLE_APPLICATION_CREDENTIALS on a CI runner), then try again"
        ) from None
    return credentials


def read_secret(version: str, timeout: float = 20) -> str:
    """The value of a Secret Manager secret version (`projects/P/secrets/S/versions/V`).

    For code without edge.yaml (a training job): endpoint and credentials come from the environment
    (EDGE_SECRETMANAGER_ENDPOINT, EDGE_CREDENTIALS), else Google's endpoint and the attached account.
    """
    from google.cloud import secretmanager_v1

    endpoints = Endpoints.model_validate(env_overrides())
    options = {"api_endpoint": endpoints.secretmanager} if endpoints.secretmanager else {}
    client = secretmanager_v1.SecretManagerServiceClient(
        credentials=credentials_for(endpoints), transport="rest", client_options=options
    )
    response = client.access_secret_version(name=version, retry=None, timeout=timeout)
    return bytes(response.payload.data).decode("utf-8")


def access_token() -> str:
    """A short-lived OAuth access token of the credentials every Google client uses (a Google
    registry's password).

    Built as every other Google credential is, so EDGE_CREDENTIALS counts here too, and refreshed only
    when due: a token that is still valid goes as it is.
    """
    import google.auth.exceptions
    import google.auth.transport.requests

    endpoints = Endpoints.model_validate(env_overrides())
    if endpoints.credentials == "anonymous":
        raise CloudError(
            "EDGE_CREDENTIALS=anonymous sends no credentials, and a Google registry needs them: unset "
            "EDGE_CREDENTIALS, or push to a local registry (EDGE_REGISTRY)"
        )
    try:
        credentials = credentials_for(endpoints)
        if not credentials.valid:
            credentials.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.GoogleAuthError as exc:
        raise CloudError(f"could not get a Google access token: {exc}") from exc
    token: str | None = credentials.token
    if not token:
        raise CloudError("Google credentials gave no access token: refresh them with gcloud and retry")
    return token


def tracking_url_from_secret(secret_version: str) -> str:
    """The MongoDB URL `edge setup` stored in Secret Manager (`projects/P/secrets/S/versions/latest`)."""
    from google.api_core import exceptions

    try:
        return read_secret(secret_version)
    except exceptions.NotFound:
        raise CloudError(
            f"{secret_version} holds no tracking URL: run `EDGE_TRACKING_URL=... edge setup` first"
        ) from None


class IamRest:
    """The few IAM calls setup needs, over IAM's documented REST API with an authorized session."""

    TIMEOUT = 30

    def __init__(self, session: Any, base: str) -> None:
        self.session = session
        self.base = base.rstrip("/")

    def get_service_account(self, project: str, email: str) -> dict[str, Any] | None:
        """The service account, or None when it does not exist."""
        response = self.session.get(
            f"{self.base}/v1/projects/{project}/serviceAccounts/{email}", timeout=self.TIMEOUT
        )
        if response.status_code == 404:
            return None
        _raise_for_status(response)
        return response.json()  # type: ignore[no-any-return]

    def create_service_account(self, project: str, account_id: str, display_name: str) -> dict[str, Any]:
        response = self.session.post(
            f"{self.base}/v1/projects/{project}/serviceAccounts",
            json={"accountId": account_id, "serviceAccount": {"displayName": display_name}},
            timeout=self.TIMEOUT,
        )
        _raise_for_status(response)
        return response.json()  # type: ignore[no-any-return]


def _raise_for_status(response: Any) -> None:
    """Raise the same api_core exception the official clients raise for this HTTP error."""
    if response.status_code >= 400:
        from google.api_core import exceptions

        raise exceptions.from_http_response(response)  # type: ignore[no-untyped-call]
