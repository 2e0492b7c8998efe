"""`edge setup` against the stand-ins and a real GCS emulator: plan, requests, idempotence, secrecy."""

from __future__ import annotations

import base64
import contextlib
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner, Result

from edge.cli import app
from edge.cloud.setup import BUCKET_ROLE, PROJECT_ROLES, SECRET_ROLE
from tests.cloud_env import PROJECT, endpoint_env, write_settings
from tests.gcs_emulator import GcsEmulator
from tests.standin.cloud import LocalCloud
from tests.standin.gcs_front import GcsFront
from tests.standin.server import ApiError, StandIn

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
    assert enable.body["serviceIds"] == ["aiplatform.googleapis.com"]  # only what was off
    assert repository.query["repositoryId"] == "edge" and repository.body["format"] == 1
    assert account.body["accountId"] == "edge-jobs"
    bindings = {b["role"]: b["members"] for b in roles.body["policy"]["bindings"]}
    assert all(ACCOUNT in bindings[role] for role in PROJECT_ROLES)
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


def test_a_service_account_iam_does_not_see_yet_says_to_run_again(
    project: dict[str, object], local_cloud: LocalCloud
) -> None:
    # Google: a new service account can take a minute before a policy may bind it.
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
