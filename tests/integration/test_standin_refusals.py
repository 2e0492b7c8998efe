"""What the stand-ins refuse, alone, through the official clients and in Google's error shape.

Each refusal is one that Google Cloud makes on a real project (tests/standin/access.py and
vertex_catalogue.py cite the sources); the body must be `google.rpc.Status` with an `ErrorInfo`
where Google sends one, so the client's real error handling runs (api_core's `reason`/`metadata`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from google.api_core import exceptions

from tests.cloud_env import PROJECT, REGION, ready_cloud
from tests.standin.cloud import LocalCloud
from tests.standin.vertex_endpoints import ProcessServers, VertexEndpoints
from tests.standin.vertex_models import VertexModels

IMAGE = "127.0.0.1:5000/edge/edge-trainer@sha256:" + "a" * 64
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
VIEWER = "user:viewer@example.com"
JOBS = f"edge-jobs@{PROJECT}.iam.gserviceaccount.com"


@pytest.fixture
def cloud() -> Iterator[LocalCloud]:
    local = ready_cloud()
    try:
        yield local
    finally:
        local.stop()


def _call(
    cloud: LocalCloud, method: str, url: str, principal: str | None = "", **kwargs: Any
) -> requests.Response:
    """A raw REST call as `principal` (default the owner; None: no token at all)."""
    headers = {}
    if principal is not None:
        headers["authorization"] = f"Bearer {cloud.access.issue_token(principal or cloud.owner)}"
    return requests.request(method, url, headers=headers, timeout=10, **kwargs)


def _error_info(answer: requests.Response) -> dict[str, Any]:
    (info,) = [d for d in answer.json()["error"].get("details", []) if d["@type"] == ERROR_INFO]
    return info


def _vertex(cloud: LocalCloud, principal: str | None = None, project: str = PROJECT) -> Any:
    from google.cloud import aiplatform

    aiplatform.init(
        project=project,
        location=REGION,
        credentials=cloud.credentials(principal),
        api_endpoint=cloud.vertex.url,
        api_transport="rest",
        staging_bucket="gs://edge-test-bucket",
    )
    return aiplatform


def _job(aiplatform: Any, machine: dict[str, Any] | None = None) -> Any:
    return aiplatform.CustomJob(
        display_name="refusal-check",
        worker_pool_specs=[
            {
                "machine_spec": machine or {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                "container_spec": {"image_uri": IMAGE, "args": ["pipeline", "train"]},
            }
        ],
        base_output_dir="gs://edge-test-bucket/jobs/x",
    )


def _upload(aiplatform: Any) -> Any:
    return aiplatform.Model.upload(
        display_name="m",
        artifact_uri="gs://edge-test-bucket/models/1",
        serving_container_image_uri=IMAGE,
        model_id="edge-fashion-mnist",
        version_aliases=["candidate"],
        sync=True,
    )


# --- projects -------------------------------------------------------------------------------------
def test_a_project_that_does_not_exist_answers_403_consumer_invalid(cloud: LocalCloud) -> None:
    VertexModels(cloud.vertex)
    url = f"{cloud.vertex.url}/v1/projects/edge-tset-project/locations/{REGION}/models/edge-fashion-mnist"
    answer = _call(cloud, "GET", url + "@candidate")
    assert answer.status_code == 403
    assert answer.json()["error"]["status"] == "PERMISSION_DENIED"
    assert answer.json()["error"]["message"] == "Permission denied on resource project edge-tset-project."
    info = _error_info(answer)
    assert info["reason"] == "CONSUMER_INVALID" and info["domain"] == "googleapis.com"
    assert info["metadata"]["consumer"] == "projects/edge-tset-project"


def test_nothing_crosses_projects(cloud: LocalCloud) -> None:
    other = cloud.access.add_project("edge-other-project", enabled=("aiplatform.googleapis.com",))
    cloud.grant("roles/owner", cloud.owner, "projects/edge-other-project")
    VertexModels(cloud.vertex)
    endpoints = VertexEndpoints(cloud.vertex, VertexModels(cloud.vertex), ProcessServers())
    mine = _upload(_vertex(cloud))
    assert mine.resource_name.startswith(f"projects/{cloud.project.number}/")
    base = f"{cloud.vertex.url}/v1/projects/{other.project_id}/locations/{REGION}"
    # The same model id under the other project is no model at all, to read or to re-alias.
    assert _call(cloud, "GET", f"{base}/models/edge-fashion-mnist@candidate").status_code == 404
    merge = _call(
        cloud,
        "POST",
        f"{base}/models/edge-fashion-mnist@1:mergeVersionAliases",
        json={"versionAliases": ["production"]},
    )
    assert merge.status_code == 404
    assert "production" not in _vertex(cloud).Model(mine.resource_name).version_aliases
    # An endpoint of the other project cannot serve this project's model.
    created = _call(cloud, "POST", f"{base}/endpoints", json={"displayName": "e"}).json()
    endpoint = created["response"]["name"]
    deploy = _call(
        cloud,
        "POST",
        f"{cloud.vertex.url}/v1/{endpoint}:deployModel",
        json={
            "deployedModel": {
                "model": f"{mine.resource_name}@1",
                "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1},
            }
        },
    )
    assert deploy.status_code == 404
    endpoints.stop()


def test_names_carry_the_project_number_ids_are_unique_and_operations_named(cloud: LocalCloud) -> None:
    VertexEndpoints(cloud.vertex, VertexModels(cloud.vertex), ProcessServers())
    aiplatform = _vertex(cloud)
    model = _upload(aiplatform)
    (upload,) = cloud.log.find(service="aiplatform", method="POST", path="models:upload")
    assert upload.principal == cloud.owner and upload.status == 200
    number = cloud.project.number
    assert model.resource_name == f"projects/{number}/locations/{REGION}/models/edge-fashion-mnist"
    base = f"{cloud.vertex.url}/v1/projects/{PROJECT}/locations/{REGION}"
    operation = _call(
        cloud,
        "POST",
        f"{base}/models:upload",
        json={"model": {"displayName": "n", "containerSpec": {"imageUri": IMAGE}}},
    ).json()
    assert operation["name"].startswith(f"projects/{number}/locations/{REGION}/models/")
    assert "/operations/" in operation["name"] and operation["done"] is True
    endpoints = [aiplatform.Endpoint.create(display_name=f"e{i}") for i in range(3)]
    job = _job(aiplatform)
    job.submit()
    ids = [e.name for e in endpoints] + [job.name, operation["response"]["model"].rsplit("/", 1)[-1]]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 19 and i.isdigit() for i in ids)
    assert all(e.resource_name.startswith(f"projects/{number}/") for e in endpoints)
    assert job.resource_name.startswith(f"projects/{number}/")


def test_a_path_no_api_serves_is_an_html_404_not_an_api_error(cloud: LocalCloud) -> None:
    # No Model Registry on this host: Google's front end answers a page, not "model not found".
    answer = _call(
        cloud, "GET", f"{cloud.vertex.url}/v1/projects/{PROJECT}/locations/{REGION}/models/x@production"
    )
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        answer.json()


# --- identity and permissions ----------------------------------------------------------------------
def test_a_call_without_a_token_is_unauthenticated(cloud: LocalCloud) -> None:
    answer = _call(cloud, "GET", f"{cloud.secretmanager.url}/v1/projects/{PROJECT}/secrets/s", principal=None)
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
    assert _error_info(answer)["reason"] == "CREDENTIALS_MISSING"
    forged = requests.get(
        f"{cloud.secretmanager.url}/v1/projects/{PROJECT}/secrets/s",
        headers={"authorization": "Bearer ya29.not-issued-here"},
        timeout=10,
    )
    assert forged.status_code == 401


def test_a_missing_permission_is_named_and_a_role_grants_it(cloud: LocalCloud) -> None:
    cloud.grant("roles/viewer", VIEWER)
    with pytest.raises(exceptions.Forbidden) as refused:
        _job(_vertex(cloud, VIEWER)).submit()
    assert refused.value.reason == "IAM_PERMISSION_DENIED"
    assert refused.value.metadata["permission"] == "aiplatform.customJobs.create"
    assert "Permission 'aiplatform.customJobs.create' denied" in refused.value.message
    cloud.grant("roles/aiplatform.user", VIEWER)
    _job(_vertex(cloud, VIEWER)).submit()  # now allowed
    # Running the job as a service account needs actAs on it, which aiplatform.user lacks.
    cloud.accounts.add(PROJECT, "edge-jobs")
    with pytest.raises(exceptions.Forbidden) as act_as:
        _job(_vertex(cloud, VIEWER)).submit(service_account=JOBS)
    assert act_as.value.metadata["permission"] == "iam.serviceAccounts.actAs"
    cloud.grant("roles/iam.serviceAccountUser", VIEWER, f"projects/{PROJECT}/serviceAccounts/{JOBS}")
    _job(_vertex(cloud, VIEWER)).submit(service_account=JOBS)


def test_a_role_on_one_secret_grants_that_secret_only(cloud: LocalCloud) -> None:
    base = f"{cloud.secretmanager.url}/v1/projects/{PROJECT}/secrets"
    for name in ("tracking", "other"):
        assert _call(cloud, "POST", f"{base}?secretId={name}", json={"replication": {"automatic": {}}}).ok
        assert _call(cloud, "POST", f"{base}/{name}:addVersion", json={"payload": {"data": "eA=="}}).ok
    job = f"serviceAccount:{JOBS}"
    cloud.grant("roles/secretmanager.secretAccessor", job, f"projects/{PROJECT}/secrets/tracking")
    assert _call(cloud, "GET", f"{base}/tracking/versions/latest:access", job).status_code == 200
    refused = _call(cloud, "GET", f"{base}/other/versions/latest:access", job)
    assert refused.status_code == 403
    assert _error_info(refused)["metadata"]["permission"] == "secretmanager.versions.access"
    # Reading the secret's metadata is another permission, which the accessor role does not hold.
    assert _call(cloud, "GET", f"{base}/tracking", job).status_code == 403


def test_object_admin_on_a_bucket_cannot_read_the_bucket_itself(cloud: LocalCloud, gcs_emulator: Any) -> None:
    from tests.standin.gcs_front import GcsFront
    from tests.standin.server import StandIn

    front = cloud.add(StandIn("storage"))
    GcsFront(front, gcs_emulator.url)
    bucket = "edge-refusal-bucket"
    assert _call(cloud, "POST", f"{front.url}/storage/v1/b?project={PROJECT}", json={"name": bucket}).ok
    deployer = "serviceAccount:edge-deployer@edge-test-project.iam.gserviceaccount.com"
    cloud.grant("roles/storage.objectAdmin", deployer)
    objects = _call(cloud, "GET", f"{front.url}/storage/v1/b/{bucket}/o", deployer)
    assert objects.status_code == 200
    refused = _call(cloud, "GET", f"{front.url}/storage/v1/b/{bucket}", deployer)
    assert refused.status_code == 403
    assert _error_info(refused)["metadata"]["permission"] == "storage.buckets.get"
    assert _call(cloud, "GET", f"{front.url}/storage/v1/b/{bucket}", None).status_code == 401


def test_a_serving_container_reaches_storage_as_its_identity(cloud: LocalCloud, gcs_emulator: Any) -> None:
    """Vertex's default serving account reads the model and nothing more; a custom one, by its roles."""
    from tests.standin.gcs_front import GcsFront
    from tests.standin.gcs_identity import IdentityProxy
    from tests.standin.server import StandIn

    front = GcsFront(cloud.add(StandIn("storage")), gcs_emulator.url)
    bucket = gcs_emulator.create_bucket().removeprefix("gs://")
    gcs_emulator.upload(f"gs://{bucket}", "models/v1/metadata.json", b"{}")
    managed = "custom-online-prediction@p1-tp.iam.gserviceaccount.com"
    log = f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name=predictions/x.jsonl"
    proxies = []
    try:
        default = IdentityProxy(front, gcs_emulator.url, None, f"gs://{bucket}/models/v1", managed).start()
        proxies.append(default)
        model = requests.get(f"{default.url}/storage/v1/b/{bucket}/o/models%2Fv1%2Fmetadata.json", timeout=10)
        assert model.status_code == 200
        refused = requests.post(default.url + log, data=b"{}", timeout=10)
        assert refused.status_code == 403
        assert refused.json()["error"]["message"].startswith(
            f"{managed} does not have storage.objects.create access to the Google Cloud Storage object."
        )
        jobs = IdentityProxy(front, gcs_emulator.url, JOBS, f"gs://{bucket}/models/v1", managed).start()
        proxies.append(jobs)
        assert requests.post(jobs.url + log, data=b"{}", timeout=10).status_code == 403  # no role yet
        cloud.grant("roles/storage.objectAdmin", f"serviceAccount:{JOBS}")
        assert requests.post(jobs.url + log, data=b"{}", timeout=10).status_code == 200
        assert "predictions/x.jsonl" in gcs_emulator.objects(f"gs://{bucket}")
    finally:
        for proxy in proxies:
            proxy.stop()


# --- API state --------------------------------------------------------------------------------------
def test_a_new_project_has_every_api_disabled_until_enabling_propagates() -> None:
    from google.cloud import service_usage_v1

    with LocalCloud.start(project=PROJECT, enable_delay=0.8) as cloud:
        url = f"{cloud.vertex.url}/v1/projects/{PROJECT}/locations/{REGION}/endpoints"
        VertexEndpoints(cloud.vertex, VertexModels(cloud.vertex), ProcessServers())
        answer = _call(cloud, "GET", url)
        assert answer.status_code == 403
        assert answer.json()["error"]["status"] == "PERMISSION_DENIED"
        info = _error_info(answer)
        assert info["reason"] == "SERVICE_DISABLED" and info["domain"] == "googleapis.com"
        assert info["metadata"]["service"] == "aiplatform.googleapis.com"
        assert info["metadata"]["activationUrl"].endswith(
            f"/apis/api/aiplatform.googleapis.com/overview?project={cloud.project.number}"
        )
        usage = service_usage_v1.ServiceUsageClient(
            credentials=cloud.credentials(),
            transport="rest",
            client_options={"api_endpoint": cloud.serviceusage.url},
        )
        operation = usage.batch_enable_services(
            request={"parent": f"projects/{PROJECT}", "service_ids": ["aiplatform.googleapis.com"]}
        )
        operation.result(timeout=10)
        enabled = time.monotonic()
        # Listed as enabled at once, answering only once the change has propagated.
        listed = usage.list_services(request={"parent": f"projects/{PROJECT}", "filter": "state:ENABLED"})
        assert "aiplatform.googleapis.com" in {s.config.name for s in listed}
        assert _call(cloud, "GET", url).status_code == 403
        time.sleep(max(0.0, 0.85 - (time.monotonic() - enabled)))
        assert _call(cloud, "GET", url).status_code == 200


# --- eventual consistency --------------------------------------------------------------------------
def test_a_new_service_account_cannot_be_bound_for_a_while() -> None:
    with ready_cloud(account_propagation=0.8) as cloud:
        created = _call(
            cloud,
            "POST",
            f"{cloud.iam.url}/v1/projects/{PROJECT}/serviceAccounts",
            json={"accountId": "edge-jobs"},
        )
        assert created.status_code == 200
        made = time.monotonic()
        policy_url = f"{cloud.resourcemanager.url}/v3/projects/{PROJECT}"
        policy = _call(cloud, "POST", f"{policy_url}:getIamPolicy", json={}).json()
        policy["bindings"].append({"role": "roles/logging.logWriter", "members": [f"serviceAccount:{JOBS}"]})
        refused = _call(cloud, "POST", f"{policy_url}:setIamPolicy", json={"policy": policy})
        assert refused.status_code == 400
        assert refused.json()["error"] == {
            "code": 400,
            "message": f"Service account {JOBS} does not exist.",
            "status": "INVALID_ARGUMENT",
        }
        time.sleep(max(0.0, 0.85 - (time.monotonic() - made)))
        assert _call(cloud, "POST", f"{policy_url}:setIamPolicy", json={"policy": policy}).status_code == 200


# --- catalogues -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ({"machine_type": "a2-highgpu-1"}, 'machine_type "a2-highgpu-1" is not supported'),
        (
            {
                "machine_type": "n1-standard-4",
                "accelerator_type": "NVIDIA_TESLA_A100",
                "accelerator_count": 1,
            },
            'Accelerator "NVIDIA_TESLA_A100" is not supported for machine type "n1-standard-4"',
        ),
        (
            {"machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 3},
            'takes 1 or 2 or 4 "NVIDIA_TESLA_T4" accelerators, not 3',
        ),
        ({"machine_type": "g2-standard-8"}, 'Machine type "g2-standard-8" requires accelerators'),
    ],
)
def test_an_unknown_machine_or_pairing_is_refused(
    cloud: LocalCloud, machine: dict[str, Any], expected: str
) -> None:
    with pytest.raises(exceptions.BadRequest, match=expected):
        _job(_vertex(cloud), machine).submit()


def test_valid_pairings_are_accepted(cloud: LocalCloud) -> None:
    aiplatform = _vertex(cloud)
    for machine in (
        {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1},
        {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "accelerator_count": 1},
        {"machine_type": "n1-standard-4", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2},
    ):
        _job(aiplatform, machine).submit()
    assert len(cloud.jobs.jobs) == 3


# --- deployModel timing -----------------------------------------------------------------------------
def test_a_server_that_never_gets_healthy_keeps_deploy_running_then_fails(cloud: LocalCloud) -> None:
    models = VertexModels(cloud.vertex)
    endpoints = VertexEndpoints(cloud.vertex, models, ProcessServers(), health_timeout=1.5)
    base = f"{cloud.vertex.url}/v1/projects/{PROJECT}/locations/{REGION}"
    upload = {
        "model": {
            "displayName": "silent",
            "containerSpec": {
                "imageUri": IMAGE,
                "command": [sys.executable, "-c", "import time; time.sleep(30)"],
            },
        },
        "modelId": "silent",
    }
    model = _call(cloud, "POST", f"{base}/models:upload", json=upload).json()["response"]["model"]
    endpoint = _call(cloud, "POST", f"{base}/endpoints", json={"displayName": "e"}).json()["response"]["name"]
    started = time.monotonic()
    deploy = _call(
        cloud,
        "POST",
        f"{cloud.vertex.url}/v1/{endpoint}:deployModel",
        json={
            "deployedModel": {
                "model": f"{model}@1",
                "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-2"}, "minReplicaCount": 1},
            }
        },
    ).json()
    assert deploy["done"] is False and deploy["name"].startswith(endpoint + "/operations/")
    poll = f"{cloud.vertex.url}/ui/{deploy['name']}"
    while (state := _call(cloud, "GET", poll).json()).get("done") is not True:
        assert time.monotonic() - started < 20
        time.sleep(0.1)
    assert time.monotonic() - started >= 1.5  # running for the whole health timeout
    assert state["error"]["code"] == 9  # FAILED_PRECONDITION
    assert state["error"]["message"].startswith("Model server never became ready.")
    assert _call(cloud, "GET", f"{cloud.vertex.url}/v1/{endpoint}").json()["deployedModels"] == []
    endpoints.stop()


# --- keyless CI: STS and IAM Credentials ------------------------------------------------------------
def _federated_credentials(cloud: LocalCloud, folder: Path, issuer: Any, provider: Any, sub: str) -> Any:
    from google.auth import identity_pool

    claims = {
        "iss": provider.issuer,
        "aud": "org-id",
        "sub": sub,
        "oidc.circleci.com/project-id": "circle-project",
        "exp": time.time() + 3600,
    }
    (folder / "token").write_text(issuer.mint(claims))
    config = {
        "type": "external_account",
        "audience": f"//iam.googleapis.com/{provider.name}",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": f"{cloud.extra['sts'].url}/v1/token",
        "service_account_impersonation_url": (
            f"{cloud.extra['iamcredentials'].url}/v1/projects/-/serviceAccounts/"
            f"edge-deployer@{PROJECT}.iam.gserviceaccount.com:generateAccessToken"
        ),
        "credential_source": {"file": str(folder / "token")},
    }
    # from_info, not google.auth.default(): that also asks the public Resource Manager for the
    # project id, which nothing here can reach.
    return identity_pool.Credentials.from_info(
        config, scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )


def test_ci_exchanges_its_oidc_token_for_the_deployer_and_nothing_else(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    import google.auth.exceptions
    import google.auth.transport.requests

    from tests.standin.federation import IamCredentials, Provider, SecurityTokenService
    from tests.standin.oidc import OidcIssuer
    from tests.standin.server import StandIn

    issuer = OidcIssuer("https://oidc.circleci.com/org/org-id")
    cloud.add(issuer)
    sts = SecurityTokenService(cloud.add(StandIn("sts")), cloud.access)
    sts.trust(issuer.issuer, issuer.url)
    IamCredentials(cloud.add(StandIn("iamcredentials")), cloud.access, cloud.accounts.accounts)
    provider = sts.add_provider(
        Provider(
            cloud.project,
            "circleci",
            "circleci",
            issuer="https://oidc.circleci.com/org/org-id",
            allowed_audiences=["org-id"],
            mapping={
                "google.subject": "assertion.sub",
                "attribute.project": "assertion['oidc.circleci.com/project-id']",
            },
            condition="attribute.project=='circle-project'",
        )
    )
    deployer = cloud.accounts.add(PROJECT, "edge-deployer")
    pool = f"principalSet://iam.googleapis.com/{provider.pool_name}/attribute.project/circle-project"
    cloud.grant("roles/iam.workloadIdentityUser", pool, f"projects/{PROJECT}/serviceAccounts/{deployer}")
    cloud.grant("roles/aiplatform.user", f"serviceAccount:{deployer}")
    request = google.auth.transport.requests.Request()
    # CircleCI's `sub` (org/<uuid>/project/<uuid>/user/<uuid>/vcs-origin/.../vcs-ref/...) is too long.
    long_sub = "org/" + "o" * 36 + "/project/" + "p" * 36 + "/user/" + "u" * 36 + "/vcs-origin/github.com/x/y"
    with pytest.raises(google.auth.exceptions.OAuthError, match="exceeds the 127 bytes limit"):
        _federated_credentials(cloud, tmp_path, issuer, provider, long_sub).refresh(request)
    credentials = _federated_credentials(cloud, tmp_path, issuer, provider, "org/o/project/p/user/u")
    credentials.refresh(request)
    assert cloud.access.tokens[credentials.token] == f"serviceAccount:{deployer}"
    VertexModels(cloud.vertex)
    from google.cloud import aiplatform

    aiplatform.init(
        project=PROJECT,
        location=REGION,
        credentials=credentials,
        api_endpoint=cloud.vertex.url,
        api_transport="rest",
    )
    assert list(aiplatform.Model.list()) == []  # the deployer may read the registry
    # Without the pool's binding on the deployer, the exchange gives nothing to impersonate.
    cloud.access.policies.policies.pop(f"projects/{PROJECT}/serviceAccounts/{deployer}")
    with pytest.raises(google.auth.exceptions.GoogleAuthError, match=r"iam\.serviceAccounts\.getAccessToken"):
        _federated_credentials(cloud, tmp_path, issuer, provider, "org/o/project/p/user/u").refresh(request)
