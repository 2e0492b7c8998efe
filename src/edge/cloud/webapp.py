"""The webapp on Cloud Run, asking the Vertex AI endpoint for its predictions.

`deploy_webapp` creates the Cloud Run service or updates it to the given image (by digest), with the
settings that point the webapp at the endpoint (MODEL_BACKEND=vertex, VERTEX_ENDPOINT). It runs as
the project's service account, which needs `roles/aiplatform.user` to call the endpoint. The
service is private unless `public=True`: only then does `allUsers` get `roles/run.invoker`, and a
later deployment without it takes that access away again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.cloud.clients import Clients
from edge.cloud.errors import CloudError, explain
from edge.cloud.registry import check_image

SERVICE_ID = "edge-webapp"
WEBAPP_PORT = 8000
INVOKER = "roles/run.invoker"
EVERYONE = "allUsers"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WebappDeployment:
    name: str
    uri: str
    public: bool
    created: bool


def deploy_webapp(
    clients: Clients,
    image_uri: str,
    endpoint: str,
    *,
    public: bool = False,
    progress: Progress = lambda _m: None,
) -> WebappDeployment:
    """Create or update the Cloud Run service; grant or withdraw public access as asked."""
    check_image(image_uri, "webapp", "deploy")
    from google.api_core import exceptions
    from google.cloud import run_v2

    settings = clients.settings
    parent = f"projects/{settings.project}/locations/{settings.region}"
    name = f"{parent}/services/{SERVICE_ID}"
    client = clients.cloud_run()
    container = run_v2.Container(
        image=image_uri,
        ports=[run_v2.ContainerPort(container_port=WEBAPP_PORT)],
        env=[
            run_v2.EnvVar(name="MODEL_BACKEND", value="vertex"),
            run_v2.EnvVar(name="VERTEX_ENDPOINT", value=endpoint),
            *(
                [run_v2.EnvVar(name="VERTEX_API_ENDPOINT", value=settings.endpoint("aiplatform") or "")]
                if settings.endpoint("aiplatform")
                else []
            ),
        ],
    )
    template = run_v2.RevisionTemplate(containers=[container], service_account=settings.service_account_email)
    try:
        try:
            existing = client.get_service(name=name)
        except exceptions.NotFound:
            existing = None
        if existing is None:
            progress(f"Creating Cloud Run service {SERVICE_ID} in {settings.region}")
            service = run_v2.Service(template=template, labels={"managed_by": "edge"})
            result = client.create_service(parent=parent, service=service, service_id=SERVICE_ID).result()
        else:
            progress(f"Updating Cloud Run service {SERVICE_ID} to {image_uri}")
            existing.template = template
            result = client.update_service(service=existing).result()
        _set_public(client, name, public, progress)
    except exceptions.GoogleAPICallError as exc:
        raise explain(exc, "deploying the webapp to Cloud Run") from exc
    if not result.uri:
        raise CloudError(f"Cloud Run reported no URL for {name}: see the service in the console")
    return WebappDeployment(name, result.uri, public, existing is None)


def _set_public(client: Any, name: str, public: bool, progress: Progress) -> None:
    from google.iam.v1 import iam_policy_pb2, policy_pb2

    policy = client.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=name))
    invokers = next((b for b in policy.bindings if b.role == INVOKER), None)
    is_public = invokers is not None and EVERYONE in invokers.members
    if public == is_public:
        return
    if public:
        progress("Allowing unauthenticated access (--allow-unauthenticated)")
        if invokers is None:
            policy.bindings.append(policy_pb2.Binding(role=INVOKER, members=[EVERYONE]))
        else:
            invokers.members.append(EVERYONE)
    else:
        progress("Withdrawing unauthenticated access (deploy with --allow-unauthenticated to keep it)")
        assert invokers is not None
        invokers.members.remove(EVERYONE)
    client.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=name, policy=policy))
