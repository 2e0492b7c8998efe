"""CircleCI's release workflow on main, rehearsed as CircleCI runs it: `images` -> `pipeline` -> `release`.

The jobs, their order and their steps come from .circleci/config.yml (tests/circleci.py runs them:
a fresh clone and HOME per job, each `run` step in `bash -eo pipefail` with CircleCI's `$BASH_ENV`,
`commands:` expanded, only what `persist_to_workspace` lists carried to the next job). The jobs of
the `test-and-release` workflow that run on main with the `gcp-edge` context are rehearsed; the
`test` job they require is `make lint test test-containers`, this very suite, so it is taken as
passed, and `metrics-diff` does not run on main.

The project is set up the README's way first, by its owner: `edge config` and `edge setup` (the
bucket, the registry, the jobs' service account, the tracking secret), then the "CI/CD" section's
`gcloud` lines (the Workload Identity pool's provider and the deployer with exactly the README's
roles), applied through the stand-ins (tests/integration/test_rehearsal.py `apply_gcloud`). The
jobs get the variables CircleCI sets (CIRCLE_SHA1 the clone's commit, CIRCLE_BRANCH=main,
CIRCLECI=true...) and the context's (GCP_WIF_PROVIDER, GCP_SERVICE_ACCOUNT, EDGE_PROJECT,
EDGE_REGION, EDGE_BUCKET), and no Google credential: `make google-credentials` and google-auth's
real executable-sourced `external_account` flow get them, from a `circleci` command on the PATH
that prints tokens signed by a local OIDC issuer (tests/standin/oidc.py), exchanged at the STS
stand-in (signature, the README's mapping and condition) and then for the deployer's token at the
IAM Credentials stand-in. Stand-in-only: after each step, the credential file's two Google hosts
are pointed at those stand-ins (as tests/integration/test_ci_identity.py does), and the jobs'
environment names the other stand-ins (EDGE_<API>_ENDPOINT, EDGE_REGISTRY, STORAGE_EMULATOR_HOST)
as a machine's settings would. The uv cache CircleCI restores is this machine's shared uv cache.

Real software: the Docker engine builds the images and pushes them to a local registry, the
training job runs the pushed trainer image as a container, the deployed model is served by the
same image in a container, and DVC pushes to the GCS emulator. The repository the jobs clone is
this tree with one more commit, a CI-like state: tiny params (the rehearsal checks the path, not
the model: a small subset of the data, one small epoch, floors a model that small passes) and the
DVC remote `edge setup` added to .dvc/config. `edge data seed` finds Fashion-MNIST in Debian's
package on this machine (CircleCI's job downloads it from the mirrors).

`pytest -m containers tests/containers/test_circleci_workflow.py -s` shows each job and step with
its duration, and the wall time.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.circleci import CircleCi, WorkflowRun, job_steps, load_config, workflow_jobs
from tests.cloud_env import APIS
from tests.conftest import QUIET_ENV
from tests.docker_env import remove_image
from tests.integration.test_pipeline_dvc import copy_repository
from tests.integration.test_rehearsal import CIRCLE_PROJECT, PROJECT, apply_gcloud, commands
from tests.standin.emulate import Emulation, emulation
from tests.standin.oidc import CIRCLECI_ISSUER, OidcIssuer, write_circleci_command
from tests.standin.vertex_endpoints import DockerServers
from tests.standin.vertex_jobs import SUCCEEDED, DockerRunner

# The first run builds the trainer image cold (TensorFlow) and pushes 2.4 GB.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".circleci" / "config.yml"
WORKFLOW, BRANCH, CONTEXT = "test-and-release", "main", "gcp-edge"
ORG = "org-id"  # the README's ORG_ID, as apply_gcloud fills it in
REGION = "europe-west2"
DEPLOYER = f"edge-deployer@{PROJECT}.iam.gserviceaccount.com"
TRACKING_URL = "mongodb://edge:pw-rehearsal@127.0.0.1:1/edge"  # nothing listens: runs stay in journals
GIT = ["git", "-c", "user.name=Edge CI", "-c", "user.email=ci@example.com"]
TINY_PARAMS = """\
prepare:
  seed: 42
  validation_size: 200
  max_train_images: 2000
  max_test_images: 500
train:
  seed: 1
  epochs: 2
  batch_size: 64
  learning_rate: 0.003
  warmup_epochs: 0
  flip: false
  shift: 0
  contrast: 0.0
  noise: 0.0
  calibrate: false
  model:
    filters: [8]
    dense_units: 32
    dropout: 0.0
    bfloat16: false
    tta_flip: false
evaluate:
  min_accuracy: 0.5
  min_class_recall: 0.0
  min_class_precision: 0.0
  max_ece: 1.0
  clear_examples: null
  seed: 0
  invariance:
    darker: {brightness: 0.7, floor: 0.0}
gate:
  max_regression: 0.05
  class_recall: {}
"""
# What the jobs find on the machine: its CA bundle and package index settings, as a machine image has.
MACHINE = ("LANG", "TERM", "DOCKER_HOST")


def machine_environment() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in MACHINE or k.startswith("PIP_") or "CERT" in k}
    keep.update(
        {k: v for k, v in os.environ.items() if k.endswith("CA_BUNDLE") or k.lower().endswith("_proxy")}
    )
    return keep


@dataclass
class Project:
    """The local cloud after the owner's one-time setup, and the repository CI clones."""

    emulated: Emulation
    origin: Path
    issuer: OidcIssuer
    bin_dir: Path
    bucket: str


def owner_setup(emulated: Emulation, origin: Path, bucket: str, readme_lines: list[str]) -> None:
    """`edge config` and `edge setup` as the owner, then the README's CI/CD `gcloud` lines."""
    env = {**os.environ, **QUIET_ENV, **emulated.env, "EDGE_TRACKING_URL": TRACKING_URL}
    edge = str(Path(sys.executable).with_name("edge"))
    for args in (
        ["config", "-y", "--project", PROJECT, "--region", REGION, "--bucket", bucket],
        ["setup"],
    ):
        done = subprocess.run([edge, *args], cwd=origin, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"edge {' '.join(args)}:\n{done.stdout}{done.stderr}"
    (origin / "edge.yaml").unlink()  # CI writes its own from the context's variables
    # The DVC remote setup added, committed as a developer would.
    subprocess.run(["git", "add", ".dvc/config"], cwd=origin, check=True)
    subprocess.run([*GIT, "commit", "-qm", "DVC remote on the project's bucket"], cwd=origin, check=True)
    assert apply_gcloud(readme_lines, emulated, bucket) >= 4


@pytest.fixture
def cloud(docker_engine: docker.DockerClient, base_image: str, tmp_path: Path) -> Iterator[Project]:
    """Stand-ins with jobs and serving in Docker, a CircleCI issuer, and the repository CI clones."""
    issuer = OidcIssuer(CIRCLECI_ISSUER.format(org=ORG)).start()
    bin_dir = tmp_path / "bin"
    write_circleci_command(bin_dir, issuer, ORG, CIRCLE_PROJECT)
    origin = copy_repository(tmp_path / "origin")
    subprocess.run(["git", "branch", "-M", BRANCH], cwd=origin, check=True)
    (origin / "params.yaml").write_text(TINY_PARAMS)
    subprocess.run([*GIT, "commit", "-qam", "Tiny params for the rehearsal"], cwd=origin, check=True)
    runner, servers = DockerRunner(docker_engine), DockerServers(docker_engine)
    try:
        with (
            issuer,
            emulation(
                project=PROJECT, runner=runner, servers=servers, enabled=(*APIS, "sts.googleapis.com")
            ) as emulated,
        ):
            emulated.sts.trust(issuer.issuer, issuer.url)
            yield Project(emulated, origin, issuer, bin_dir, f"edge-ci-{secrets.token_hex(3)}")
    finally:
        for container in (*runner.containers, *servers.started):
            with contextlib.suppress(docker.errors.NotFound):
                docker_engine.containers.get(container).remove(force=True)
        # The images the jobs built and pushed: every tag of this run's commits.
        commits = subprocess.run(
            ["git", "log", "--format=%H"], cwd=origin, capture_output=True, text=True
        ).stdout.split()[:2]
        for image in docker_engine.images.list():
            for tag in image.tags:
                if any(c in tag or c[:12] in tag for c in commits):
                    remove_image(docker_engine, tag)


def rehearse(project: Project, tmp_path: Path, readme_lines: list[str]) -> tuple[WorkflowRun, int]:
    """The owner's setup with `readme_lines`, then the workflow's jobs for main with gcp-edge; the
    run and where in the request log the workflow started."""
    emulated = project.emulated
    owner_setup(emulated, project.origin, project.bucket, readme_lines)
    mark = len(emulated.cloud.log)
    # CircleCI reads the configuration of the commit it builds.
    config = load_config(project.origin / CONFIG.relative_to(ROOT))
    jobs = workflow_jobs(config, WORKFLOW, BRANCH, CONTEXT)
    # Standing in for Google's hosts (the rest of the environment names the other stand-ins).
    stand_ins = {k: v for k, v in emulated.env.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    python_bin = Path(sys.base_prefix) / "bin"  # python3 for `make setup`, not this virtualenv
    path = f"{project.bin_dir}:{python_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    (provider,) = emulated.sts.providers

    def environment(job: str, clone: Path) -> dict[str, str]:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
        circleci = str(project.bin_dir / "circleci")
        token = subprocess.run([circleci, "run", "oidc", "get"], capture_output=True, text=True, check=True)
        return {
            **machine_environment(),
            **stand_ins,
            **QUIET_ENV,
            "EDGE_VERTEX_POLL_SECONDS": "1",
            # Stand-in-only: google-auth asks the public Resource Manager for the id of the project
            # an external account's audience names, unless the project is named; nothing here
            # reaches Google's hosts.
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "PATH": path,
            # CircleCI's built-in variables (https://circleci.com/docs/variables/#built-in-environment-variables).
            "CI": "true",
            "CIRCLECI": "true",
            "CIRCLE_BRANCH": BRANCH,
            "CIRCLE_SHA1": sha.strip(),
            "CIRCLE_JOB": job,
            "CIRCLE_BUILD_NUM": str(1 + jobs.index(job)),
            "CIRCLE_WORKFLOW_ID": "workflow-rehearsal",
            "CIRCLE_PROJECT_USERNAME": "edge-org",
            "CIRCLE_PROJECT_REPONAME": "edge",
            "CIRCLE_REPOSITORY_URL": "git@github.com:edge-org/edge.git",
            "CIRCLE_ORGANIZATION_ID": ORG,
            "CIRCLE_PROJECT_ID": CIRCLE_PROJECT,
            "CIRCLE_WORKING_DIRECTORY": str(clone),
            "CIRCLE_OIDC_TOKEN": token.stdout.strip(),
            "CIRCLE_OIDC_TOKEN_V2": token.stdout.strip(),
            # The gcp-edge context, as the README's "CI/CD" section lists it.
            "GCP_WIF_PROVIDER": provider,
            "GCP_SERVICE_ACCOUNT": DEPLOYER,
            "EDGE_PROJECT": PROJECT,
            "EDGE_REGION": REGION,
            "EDGE_BUCKET": project.bucket,
        }

    def point_google_hosts_at_stand_ins(home: Path) -> None:
        credentials = home / "gcp-credentials.json"
        if credentials.is_file():
            text = credentials.read_text().replace("https://sts.googleapis.com", emulated.sts_url)
            text = text.replace("https://iamcredentials.googleapis.com", emulated.iamcredentials_url)
            credentials.write_text(text)

    uv_cache = Path(os.environ.get("UV_CACHE_DIR") or Path.home() / ".cache" / "uv")
    uv_cache.mkdir(parents=True, exist_ok=True)
    runner = CircleCi(
        config,
        project.origin,
        tmp_path / "circleci",
        environment,
        uv_cache,
        after_step=point_google_hosts_at_stand_ins,
        report=lambda line: print(line, flush=True),
    )
    print(f"\nrehearsing {WORKFLOW} on {BRANCH} with {CONTEXT}: {' -> '.join(jobs)}", flush=True)
    return runner.run_workflow(jobs), mark


def test_the_release_workflow_runs_as_circleci_runs_it_with_the_readme_roles(
    cloud: Project, tmp_path: Path
) -> None:
    started = time.monotonic()
    emulated = cloud.emulated
    config = load_config(CONFIG)
    assert workflow_jobs(config, WORKFLOW, BRANCH, CONTEXT) == ["images", "pipeline", "release"]
    run, mark = rehearse(cloud, tmp_path, commands("CI/CD"))
    failure = run.first_failure
    assert failure is None, f"{failure}:\n{failure.output[-4000:]}"
    # Every step of every job ran, as many as the file has (commands expanded), none skipped.
    assert len(run.steps) == sum(len(job_steps(config, job)) for job in run.jobs)
    assert [str(s) for s in run.steps if s.skipped] == []

    # The images job pushed by commit; the training job ran that trainer image, by digest.
    images = (tmp_path / "circleci" / "workspace" / "build" / "images.txt").read_text().split()
    trainer = next(ref for ref in images if "/edge-trainer@sha256:" in ref)
    (job,) = emulated.cloud.jobs.jobs.values()
    assert job.state == SUCCEEDED, job.logs
    assert job.resource["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"] == trainer
    # Released: registered with that image, deployed with all the traffic.
    ((version,),) = emulated.models.models.values()
    assert version["containerSpec"]["imageUri"] == trainer
    (endpoint,) = emulated.endpoints.endpoints.values()
    assert sorted(endpoint.resource["trafficSplit"].values()) == [100]
    # The jobs called Google as the deployer (the training job's container as the jobs' account),
    # never as the owner who set the project up.
    callers = {e.principal for e in list(emulated.cloud.log)[mark:] if e.principal}
    assert f"serviceAccount:{DEPLOYER}" in callers
    assert emulated.cloud.owner not in callers
    exchanges = emulated.cloud.log.find(service="sts", path="/v1/token")
    assert exchanges and all(e.status == 200 for e in exchanges)
    print(f"rehearsal: {time.monotonic() - started:.0f} s wall time")


def without_role(lines: list[str], role: str) -> list[str]:
    """The README's CI/CD lines with the deployer's `role` not granted (on the project or the bucket)."""
    kept = []
    for line in lines:
        loop = re.match(r"for role in ([^;]+);", line)
        if loop and role in loop.group(1).split():
            line = line.replace(loop.group(1), " ".join(r for r in loop.group(1).split() if r != role) + " ")
        elif f"--role=roles/{role}" in line and "edge-deployer@" in line:
            continue
        kept.append(line)
    assert kept != lines, f"the README's CI/CD section grants no {role}"
    return kept


# The README's deployer roles whose absence this rehearsal can see, with where the workflow stops
# and what its output names. Each fails in the pipeline job's `make cloud-repro`, at the first
# Google call that needs it: the images job makes none here (its registry is a local one without
# authentication). A run costs the whole images job (the build, and the push of 2.4 GB to a fresh
# registry) and a minute of the pipeline job, about 3 minutes on 2 cores, so one role is rehearsed
# by default: storage.legacyBucketReader, the one whose removal fails earliest (the bucket's region
# is checked before the data is uploaded and the job submitted), and the only role granted on the
# bucket rather than the project, the line most easily left out. The others fail at the same step
# with their own permission and role named; `EDGE_REHEARSE_ROLES=all` runs them too.
# Not in the table, because nothing here can refuse without them: artifactregistry.writer (the
# push goes to that local registry), storage.objectAdmin (objects go to the GCS emulator, which
# checks no permission; only bucket metadata goes through the checking front).
REFUSALS = {
    "storage.legacyBucketReader": ("pipeline", "make cloud-repro", "storage.buckets.get"),
    "aiplatform.user": ("pipeline", "make cloud-repro", "aiplatform.customJobs.create"),
    "iam.serviceAccountUser": ("pipeline", "make cloud-repro", "iam.serviceAccounts.actAs"),
}
REHEARSED_ROLES = (
    sorted(REFUSALS) if os.environ.get("EDGE_REHEARSE_ROLES") == "all" else ["storage.legacyBucketReader"]
)


@pytest.mark.parametrize("role", REHEARSED_ROLES)
def test_without_a_readme_role_the_workflow_stops_and_names_the_permission(
    cloud: Project, tmp_path: Path, role: str
) -> None:
    job, step, permission = REFUSALS[role]
    run, _mark = rehearse(cloud, tmp_path, without_role(commands("CI/CD"), role))
    failure = run.first_failure
    assert failure is not None, f"the workflow passed without roles/{role}"
    assert (failure.job, failure.name.split(" (")[0]) == (job, step), str(failure)
    assert permission in failure.output, failure.output[-3000:]
    # What the user reads says what to do: grant the very role the README grants for it.
    assert f"grant the account that runs this roles/{role}" in failure.output, failure.output[-3000:]
    # Nothing after the failing step ran but what runs `when: always`, and no later job started.
    assert run.jobs[-1] == job
