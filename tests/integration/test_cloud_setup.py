"""`edge setup` against the stand-ins and a real GCS emulator: plan, requests, idempotence, secrecy."""

from __future__ import annotations

import base64
import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner, Result

from edge.cli import app
from edge.cloud.setup import APIS, BUCKET_ROLE, PROJECT_ROLES, SECRET_ROLE
from tests.cloud_env import PROJECT, endpoint_env, write_settings
from tests.gcs_emulator import GcsEmulator
from tests.standin.cloud import LocalCloud
from tests.standin.gcs_front import GcsFront
from tests.standin.server import ApiError, Request, StandIn

PASSWORD = "s3cret-" + secrets.token_hex(6)
TRACKING_URL = f"mongodb://edge:{PASSWORD}@mongo.example.com:27017/edge"
ACCOUNT = f"serviceAccount:edge-jobs@{PROJECT}.iam.gserviceaccount.com"


@pytest.fixture
def project(tmp_path: Path, local_cloud: LocalCloud, gcs_emulator: GcsEmulator) -> dict[str, object]:
    """A git + DVC repository with an edge.yaml, and the environment pointing edge at the stand-ins."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    bucket = f"edge-setup-{secrets.token_hex(4)}"
    config = write_settings(repo, bucket=bucket)
    # The APIs that setup reads are on; Vertex AI, which it only enables, is not yet: a fresh
    # project answers every read of a disabled API with 403 SERVICE_DISABLED.
    local_cloud.project.enabled.pop("aiplatform.googleapis.com")
    front = local_cloud.add(StandIn("storage"))
    GcsFront(front, gcs_emulator.url)
    env = {**endpoint_env(local_cloud), "EDGE_CONFIG": str(config)}
    return {"repo": repo, "bucket": bucket, "env": env}


def _setup(
    project: dict[str, object], *args: str, tracking_url: str | None = None, stdin: str | None = None
) -> Result:
    env = dict(project["env"])  # type: ignore[call-overload]
    env["EDGE_TRACKING_URL"] = tracking_url or ""
    with contextlib.chdir(project["repo"]):  # type: ignore[type-var]
        return CliRunner().invoke(app, ["setup", *args], env=env, input=stdin)


def _bucket(emulator: GcsEmulator, name: str) -> dict[str, object] | None:
    answer = requests.get(f"{emulator.url}/storage/v1/b/{name}", timeout=10)
    return answer.json() if answer.status_code == 200 else None


def test_dry_run_then_apply_then_nothing(
    project: dict[str, object],
    local_cloud: LocalCloud,
    gcs_emulator: GcsEmulator,
) -> None:
    repo: Path = project["repo"]  # type: ignore[assignment]
    bucket: str = project["bucket"]  # type: ignore[assignment]
    dvc_config = (repo / ".dvc" / "config").read_text()

    dry = _setup(project, "--dry-run", tracking_url=TRACKING_URL)
    assert dry.exit_code == 0, dry.output
    assert "Dry run: nothing changed" in dry.output
    assert "enable aiplatform.googleapis.com" in dry.output
    assert local_cloud.log.mutations() == []
    assert _bucket(gcs_emulator, bucket) is None
    assert (repo / ".dvc" / "config").read_text() == dvc_config

    applied = _setup(project, tracking_url=TRACKING_URL)
    assert applied.exit_code == 0, applied.output
    assert "change(s) applied" in applied.output
    create_bucket = local_cloud.log.find(service="storage", method="POST", path="/storage/v1/b")
    assert create_bucket[0].body["location"] == "europe-west2"
    changes = [c for c in local_cloud.log.mutations() if c.service != "storage"]
    assert [f"{c.service} {c.method} {c.path.rsplit('/', 1)[-1]}" for c in changes] == [
        "serviceusage POST services:batchEnable",
        "artifactregistry POST repositories",
        "iam POST serviceAccounts",
        f"resourcemanager POST {PROJECT}:setIamPolicy",
        "secretmanager POST secrets",
        "secretmanager POST edge-tracking-url:addVersion",
        "secretmanager POST edge-tracking-url:setIamPolicy",
    ]
    enable, repository, account, roles, secret, version, secret_policy = changes
    # only what was off: Vertex AI, and STS, which keyless CI exchanges its token at
    assert enable.body["serviceIds"] == ["aiplatform.googleapis.com", "sts.googleapis.com"]
    assert repository.query["repositoryId"] == "edge" and repository.body["format"] == 1
    assert account.body["accountId"] == "edge-jobs"
    bindings = {b["role"]: b["members"] for b in roles.body["policy"]["bindings"]}
    assert all(ACCOUNT in bindings[role] for role in PROJECT_ROLES)
    # The webapp runs as the jobs account on Cloud Run and calls the Vertex AI endpoint.
    assert ACCOUNT in bindings["roles/aiplatform.user"]
    # least privilege: nothing else granted, and the owner's binding kept as it was
    assert set(bindings) == {*PROJECT_ROLES, "roles/owner"}
    assert bindings["roles/owner"] == [local_cloud.owner]
    assert secret.body["replication"] == {"automatic": {}}
    assert base64.b64decode(version.body["payload"]["data"]).decode() == TRACKING_URL
    assert secret_policy.body["policy"]["bindings"] == [{"role": SECRET_ROLE, "members": [ACCOUNT]}]
    # The bucket, in the emulator: the region, uniform access, staging objects expire, the job's role.
    created = _bucket(gcs_emulator, bucket)
    assert created is not None
    assert str(created["location"]).lower() == "europe-west2"
    assert created["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"] is True  # type: ignore[index]
    assert created["lifecycle"]["rule"][0]["condition"]["matchesPrefix"] == ["staging/"]  # type: ignore[index]
    policy = requests.get(f"{gcs_emulator.url}/storage/v1/b/{bucket}/iam", timeout=10).json()
    assert {"role": BUCKET_ROLE, "members": [ACCOUNT]} in policy["bindings"]
    # The DVC remote in the committed config, without credentials.
    config = (repo / ".dvc" / "config").read_text()
    assert f"url = gs://{bucket}/dvc" in config
    assert "remote = gcs" in config

    mark = len(local_cloud.log)
    again = _setup(project, tracking_url=TRACKING_URL)
    assert again.exit_code == 0, again.output
    assert "Nothing to do" in again.output, again.output
    # Policies are read at version 3: at version 1 a conditional binding comes back renamed.
    reads = [e for e in list(local_cloud.log)[mark:] if e.path.endswith((":getIamPolicy", "/iam"))]
    assert {e.service for e in reads} == {"resourcemanager", "storage", "secretmanager"}
    for read in reads:
        version = (read.body or {}).get("options", {}).get("requestedPolicyVersion") or read.query.get(
            "optionsRequestedPolicyVersion", read.query.get("options.requestedPolicyVersion")
        )
        assert str(version) == "3", read
    assert [e for e in list(local_cloud.log)[mark:] if e.mutating] == []
    assert (repo / ".dvc" / "config").read_text() == config

    # The secret went to Secret Manager's addVersion and nowhere else: not in output, files or requests.
    for result in (dry, applied, again):
        assert PASSWORD not in result.output
    assert not [p for p in repo.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    # Requests are logged with their bodies (base64 payloads decoded): only addVersion carried it.
    carrying = [e for e in local_cloud.log if PASSWORD in _sent(e)]
    assert [(e.method, e.path.rsplit("/", 1)[-1]) for e in carrying] == [
        ("POST", "edge-tracking-url:addVersion")
    ]


def _sent(entry: object) -> str:
    """What a logged request carried: URL, headers, body, and its base64 payload decoded."""
    raw = entry.raw_body.decode("utf-8", "replace")  # type: ignore[attr-defined]
    data = entry.body or {}  # type: ignore[attr-defined]
    payload = (data.get("payload") or {}).get("data") if isinstance(data, dict) else None
    where = f"{entry.path} {entry.query} {entry.headers}"  # type: ignore[attr-defined]
    return where + raw + (base64.b64decode(payload).decode() if payload else "")


def test_a_changed_tracking_url_adds_a_version_read_from_stdin(
    project: dict[str, object], local_cloud: LocalCloud
) -> None:
    assert _setup(project, tracking_url=TRACKING_URL).exit_code == 0
    newer = TRACKING_URL.replace("mongo.example.com", "mongo2.example.com")
    done = _setup(project, "--tracking-url-stdin", stdin=newer + "\n")
    assert done.exit_code == 0, done.output
    assert "add a version" in done.output
    assert local_cloud.secrets.value(f"projects/{PROJECT}/secrets/edge-tracking-url") == newer.encode()
    assert PASSWORD not in done.output


def test_a_bucket_in_another_region_is_refused(
    project: dict[str, object],
    local_cloud: LocalCloud,
    gcs_emulator: GcsEmulator,
) -> None:
    bucket: str = project["bucket"]  # type: ignore[assignment]
    requests.post(
        f"{gcs_emulator.url}/storage/v1/b",
        params={"project": PROJECT},
        json={"name": bucket, "location": "US"},
        timeout=10,
    ).raise_for_status()
    done = _setup(project)
    assert done.exit_code == 1
    assert f"bucket {bucket} is in US, not europe-west2" in done.output
    assert local_cloud.log.mutations() == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [(403, "permission denied: check that the APIs are enabled"), (429, "quota exceeded")],
)
def test_permission_and_quota_errors_are_explained(
    project: dict[str, object], local_cloud: LocalCloud, status: int, expected: str
) -> None:
    local_cloud.serviceusage.fail_next(
        "GET", r"/services$", ApiError(status, "The caller does not have permission")
    )
    done = _setup(project)
    assert done.exit_code == 1
    assert "listing the enabled APIs failed: The caller does not have permission" in done.output
    assert expected in done.output
    assert "Traceback" not in done.output


def test_a_bucket_of_another_project_is_named_as_such(
    project: dict[str, object], local_cloud: LocalCloud
) -> None:
    bucket: str = project["bucket"]  # type: ignore[assignment]
    local_cloud.extra["storage"].fail_next(
        "GET", f"/b/{bucket}$", ApiError(403, "does not have storage.buckets.get")
    )
    done = _setup(project)
    assert done.exit_code == 1
    assert f"bucket {bucket} exists but you cannot read it" in done.output
    assert local_cloud.log.mutations() == []


def test_a_new_service_account_is_bound_once_iam_sees_it(
    project: dict[str, object], local_cloud: LocalCloud
) -> None:
    # Google: a new service account can take a minute before a policy may bind it; setup waits.
    local_cloud.access.account_propagation = 3
    done = _setup(project, tracking_url=TRACKING_URL)
    assert done.exit_code == 0, done.output
    assert f"IAM does not see edge-jobs@{PROJECT}.iam.gserviceaccount.com yet" in done.output
    assert ACCOUNT in local_cloud.projects.policies.members(f"projects/{PROJECT}", PROJECT_ROLES[0])
    refused = [e for e in local_cloud.log.find(path=":setIamPolicy") if e.status == 400]
    assert refused, "the first binding came before IAM saw the account"


def test_a_service_account_iam_never_sees_says_to_run_again(
    project: dict[str, object], local_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge.cloud.setup.ACCOUNT_WAIT", 3.0)
    local_cloud.access.account_propagation = 3600
    done = _setup(project, tracking_url=TRACKING_URL)
    assert done.exit_code == 1
    (line,) = [line for line in done.output.splitlines() if line.startswith("error:")]
    assert f"Service account edge-jobs@{PROJECT}.iam.gserviceaccount.com does not exist." in line
    assert "run the same command again in a minute" in line
    assert "Traceback" not in done.output
    local_cloud.access.account_propagation = 0  # a minute later
    again = _setup(project, tracking_url=TRACKING_URL)
    assert again.exit_code == 0, again.output
    assert ACCOUNT in local_cloud.projects.policies.members(f"projects/{PROJECT}", PROJECT_ROLES[0])


def test_a_policy_changed_meanwhile_is_read_again_and_kept(
    project: dict[str, object], local_cloud: LocalCloud
) -> None:
    """Someone grants a role between setup's read and its write: IAM refuses the stale etag (409)."""
    policies = local_cloud.access.policies
    resource = f"projects/{PROJECT}"
    colleague = "user:colleague@example.com"
    reads = 0

    def read_then_someone_writes(request: Request) -> dict[str, object]:
        nonlocal reads
        reads += 1
        answer = policies.get(resource)
        if reads == 2:  # setup's read just before its write
            policies.bind(resource, "roles/viewer", colleague)
        return answer

    local_cloud.resourcemanager.route(
        "POST", "/v3/projects/{project}:getIamPolicy", "resourcemanager.projects.getIamPolicy"
    )(read_then_someone_writes)
    done = _setup(project, tracking_url=TRACKING_URL)
    assert done.exit_code == 0, done.output
    assert "the policy changed meanwhile; reading it again" in done.output
    writes = local_cloud.log.find(service="resourcemanager", path=":setIamPolicy")
    assert [w.status for w in writes] == [409, 200]
    assert policies.members(resource, "roles/viewer") == [colleague]  # the other change is kept
    assert ACCOUNT in policies.members(resource, PROJECT_ROLES[0])


def test_a_role_already_bound_on_the_bucket_gets_a_member_not_a_second_binding(
    project: dict[str, object], gcs_emulator: GcsEmulator
) -> None:
    bucket: str = project["bucket"]  # type: ignore[assignment]
    requests.post(
        f"{gcs_emulator.url}/storage/v1/b",
        params={"project": PROJECT},
        json={"name": bucket},
        timeout=10,
    ).raise_for_status()
    # The emulator creates every bucket in US; PATCH moves it (what the front does on insert).
    requests.patch(
        f"{gcs_emulator.url}/storage/v1/b/{bucket}", json={"location": "europe-west2"}, timeout=10
    ).raise_for_status()
    other = "serviceAccount:other@example.iam.gserviceaccount.com"
    requests.put(
        f"{gcs_emulator.url}/storage/v1/b/{bucket}/iam",
        json={"bindings": [{"role": BUCKET_ROLE, "members": [other]}]},
        timeout=10,
    ).raise_for_status()
    done = _setup(project, tracking_url=TRACKING_URL)
    assert done.exit_code == 0, done.output
    policy = requests.get(f"{gcs_emulator.url}/storage/v1/b/{bucket}/iam", timeout=10).json()
    (binding,) = [b for b in policy["bindings"] if b["role"] == BUCKET_ROLE]
    assert sorted(binding["members"]) == sorted([other, ACCOUNT])


@pytest.fixture
def fresh(tmp_path: Path, gcs_emulator: GcsEmulator) -> Iterator[dict[str, object]]:
    """A project as Google hands it over: every API disabled; enabling one takes 6 s to propagate."""
    cloud = LocalCloud.start(project=PROJECT, enable_delay=6.0)
    try:
        repo = tmp_path / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
        config = write_settings(repo, bucket=f"edge-setup-{secrets.token_hex(4)}")
        GcsFront(cloud.add(StandIn("storage")), gcs_emulator.url)
        env = {**endpoint_env(cloud), "EDGE_CONFIG": str(config)}
        yield {"repo": repo, "env": env, "cloud": cloud}
    finally:
        cloud.stop()


def test_a_fresh_project_gets_its_apis_enabled_before_anything_behind_them_is_read(
    fresh: dict[str, object],
) -> None:
    cloud: LocalCloud = fresh["cloud"]  # type: ignore[assignment]
    dry = _setup(fresh, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "not read: storage.googleapis.com is not enabled yet" in dry.output
    assert "once their APIs answer" in dry.output
    assert {e.service for e in cloud.log} == {"serviceusage"}  # nothing read behind a disabled API

    done = _setup(fresh, tracking_url=TRACKING_URL)
    assert done.exit_code == 0, done.output
    entries = list(cloud.log)
    enable = next(i for i, e in enumerate(entries) if e.path.endswith(":batchEnable"))
    assert {e.service for e in entries[:enable]} == {"serviceusage"}
    assert set(entries[enable].body["serviceIds"]) == set(APIS)
    # Enabled, then waited for: a line while the APIs still answer SERVICE_DISABLED, no error.
    assert "waiting for aiplatform.googleapis.com to answer" in done.output, done.output
    vertex = cloud.log.find(service="aiplatform", path="/customJobs")
    assert vertex[0].status == 403 and vertex[-1].status == 200
    assert "Done:" in done.output
    assert all(cloud.project.is_enabled(api) for api in APIS)
    assert ACCOUNT in cloud.projects.policies.members(f"projects/{PROJECT}", "roles/aiplatform.user")
    assert _setup(fresh, tracking_url=TRACKING_URL).output.count("Nothing to do") == 1
