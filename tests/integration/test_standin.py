"""The stand-in framework against the official clients: routing, errors, operations, CustomJobs, the log.

The stand-in is a test double, but one that other tests trust: these check it answers the way the
real clients expect (shared/cloud/vertex-rest-contract.md).
"""

from __future__ import annotations

import time

import pytest
from google.api_core import exceptions

from tests.cloud_env import ready_cloud
from tests.standin.cloud import LocalCloud
from tests.standin.server import ApiError
from tests.standin.vertex_jobs import FAILED, RUNNING, SUCCEEDED, ScriptedRunner

PROJECT, REGION = "edge-test-project", "europe-west2"


def _aiplatform(cloud: LocalCloud):  # type: ignore[no-untyped-def]
    from google.cloud import aiplatform

    aiplatform.init(
        project=PROJECT,
        location=REGION,
        credentials=cloud.credentials(),
        api_endpoint=cloud.vertex.url,
        api_transport="rest",
        staging_bucket="gs://edge-test-bucket",
    )
    return aiplatform


def _job(aiplatform, image: str = "127.0.0.1:5000/edge/trainer@sha256:" + "a" * 64):  # type: ignore[no-untyped-def]
    return aiplatform.CustomJob(
        display_name="standin-check",
        worker_pool_specs=[
            {
                "machine_spec": {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                "container_spec": {
                    "image_uri": image,
                    "args": ["pipeline", "train"],
                    "env": [{"name": "A", "value": "1"}],
                },
            }
        ],
        base_output_dir="gs://edge-test-bucket/jobs/x",
        labels={"git_commit": "abc"},
    )


def _wait(job, states: set[int], timeout: float = 10) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = int(job.state)
        if state in states:
            return state
        time.sleep(0.05)
    raise AssertionError(f"job stayed in {job.state}")


def test_custom_job_succeeds_through_the_sdk(local_cloud: LocalCloud) -> None:
    aiplatform = _aiplatform(local_cloud)
    job = _job(aiplatform)
    job.submit(service_account="edge-jobs@edge-test-project.iam.gserviceaccount.com", timeout=600)
    assert _wait(job, {SUCCEEDED}) == SUCCEEDED
    create = local_cloud.log.find(service="aiplatform", method="POST")[0]
    assert create.path == f"/v1/projects/{PROJECT}/locations/{REGION}/customJobs"
    assert create.query == {"$alt": "json;enum-encoding=int"}
    spec = create.body["jobSpec"]
    assert spec["workerPoolSpecs"][0]["replicaCount"] == "1"  # int64 as a string, as the SDK sends it
    assert spec["scheduling"]["timeout"] == "600s"
    ran = local_cloud.jobs.runner.runs[0]  # type: ignore[attr-defined]
    assert ran["args"] == ["pipeline", "train"]
    assert ran["env"]["A"] == "1"
    assert ran["env"]["AIP_MODEL_DIR"] == "gs://edge-test-bucket/jobs/x/model/"


def test_failed_job_carries_the_exit_message() -> None:
    with ready_cloud(ScriptedRunner(exit_code=2, log_tail="ValueError: bad params")) as cloud:
        aiplatform = _aiplatform(cloud)
        job = _job(aiplatform)
        job.submit()
        assert _wait(job, {FAILED, SUCCEEDED}) == FAILED
        assert "non-zero status of 2" in job.error.message
        assert "ValueError: bad params" in job.error.message


def test_cancel_stops_a_running_job() -> None:
    with ready_cloud(ScriptedRunner(seconds=30)) as cloud:
        aiplatform = _aiplatform(cloud)
        job = _job(aiplatform)
        job.submit()
        _wait(job, {RUNNING})
        job.cancel()
        assert _wait(job, {7}) == 7  # CANCELLED
        assert cloud.log.find(method="POST", path=":cancel")


def test_a_missing_image_fails_the_job() -> None:
    with ready_cloud(ScriptedRunner(missing_images=("sha256:" + "b" * 64,))) as cloud:
        job = _job(_aiplatform(cloud), image="127.0.0.1:5000/edge/trainer@sha256:" + "b" * 64)
        job.submit()
        assert _wait(job, {FAILED, SUCCEEDED}) == FAILED
        assert "Unable to pull the image" in job.error.message


def test_errors_become_api_core_exceptions(local_cloud: LocalCloud) -> None:
    aiplatform = _aiplatform(local_cloud)
    local_cloud.vertex.fail_next(
        "POST", r"customJobs$", ApiError(429, "Quota exceeded for custom training CPUs")
    )
    with pytest.raises(exceptions.TooManyRequests, match="Quota exceeded"):
        _job(aiplatform).submit()
    with pytest.raises(exceptions.NotFound):
        aiplatform.CustomJob.get(f"projects/{PROJECT}/locations/{REGION}/customJobs/42")


def test_conflict_and_operations_over_rest(local_cloud: LocalCloud) -> None:
    from google.cloud import secretmanager_v1, service_usage_v1

    cloud = local_cloud
    options = {"api_endpoint": local_cloud.secretmanager.url}
    secrets = secretmanager_v1.SecretManagerServiceClient(
        credentials=cloud.credentials(), transport="rest", client_options=options
    )
    request = {
        "parent": f"projects/{PROJECT}",
        "secret_id": "s",
        "secret": {"replication": {"automatic": {}}},
    }
    secrets.create_secret(request=request)
    with pytest.raises(exceptions.Conflict):  # 409 over REST is Conflict, not AlreadyExists
        secrets.create_secret(request=request)
    usage = service_usage_v1.ServiceUsageClient(
        credentials=cloud.credentials(),
        transport="rest",
        client_options={"api_endpoint": local_cloud.serviceusage.url},
    )
    operation = usage.batch_enable_services(
        request={"parent": f"projects/{PROJECT}", "service_ids": ["aiplatform.googleapis.com"]}
    )
    result = operation.result(timeout=10)
    assert result.services[0].config.name == "aiplatform.googleapis.com"
    assert local_cloud.log.find(service="serviceusage", method="GET", path="/v1/operations/")
    assert local_cloud.log.counts()["secretmanager"] == 2
