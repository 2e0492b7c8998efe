"""The README's cloud sections, walked against `make emulate`'s environment.

From `edge config` to `edge endpoint rollback` and `edge webapp deploy`, the commands of "Train on
Vertex AI" and "Deploy to Vertex AI" run as the README gives them, against every stand-in at once
(tests/standin/emulate.py), as the project's owner; then the "CI/CD" section's `gcloud` steps are
applied through the same IAM, Resource Manager and STS stand-ins. What cannot run here is said
where it is skipped: Docker (`edge image build/push`: the image is given by digest, the job's
container runs as a local process, the served model as `edge serve`).

The project starts as Google hands it over: every API disabled, and enabling one takes a moment
to propagate; `edge setup` enables them and waits until they answer.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import Result
from typer.testing import CliRunner

from edge.cli import app
from tests.datagen import write_fashion_files
from tests.standin.emulate import Emulation, emulation
from tests.standin.federation import Provider
from tests.standin.vertex_endpoints import ProcessServers
from tests.standin.vertex_jobs import ProcessRunner

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROJECT = "edge-local"
CIRCLE_PROJECT = "circle-project"  # CircleCI's project id, in the README's PROJECT_ID
IMAGE = "127.0.0.1:5000/edge/edge-trainer@sha256:" + "e" * 64
WEBAPP = "127.0.0.1:5000/edge/edge-webapp@sha256:" + "f" * 64
PARAMS = """\
prepare:
  validation_size: 100
train:
  seed: 1
  epochs: 4
  batch_size: 32
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
gate:
  max_regression: 0.05
"""


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def commands(title: str) -> list[str]:
    """The shell lines of a README section's ```bash blocks, comments and continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section(title), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


@pytest.fixture
def emulated(tmp_path: Path) -> Iterator[Emulation]:
    bin_dir = str(Path(sys.executable).parent)
    with emulation(
        project=PROJECT,
        runner=ProcessRunner(bin_dir=bin_dir),
        servers=ProcessServers(bin_dir=bin_dir),
        enable_delay=2.0,
        health_timeout=120,
    ) as found:
        yield found


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulated: Emulation) -> Path:
    """A clone as a user has it: git, DVC, params.yaml, the prepared splits (tiny)."""
    from edge.pipeline import PrepareParams, prepare_stage

    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    raw = write_fashion_files(tmp_path / "raw", n_train=1200, n_test=200, compress=False)
    prepare_stage(str(raw), str(root / "data" / "prepared"), PrepareParams(validation_size=100))
    (root / "params.yaml").write_text(PARAMS)
    monkeypatch.chdir(root)
    for name in ("EDGE_CONFIG", "EDGE_CREDENTIALS", "EDGE_PROJECT", "EDGE_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in emulated.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EDGE_VERTEX_POLL_SECONDS", "0.2")
    return root


def edge(*args: str, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=stdin)
    assert result.exit_code == 0, f"edge {' '.join(args)}:\n{result.output}"
    return result


def shell(*args: str) -> str:
    """`edge` in its own process, as from a shell (a long command: its output as it happened)."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("edge")), *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"edge {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_the_readme_cloud_sections_run_against_make_emulate(repo: Path, emulated: Emulation) -> None:
    started = time.monotonic()
    bucket = f"edge-local-{secrets.token_hex(3)}"
    train = commands("Train on Vertex AI")
    deploy = commands("Deploy to Vertex AI")
    ci = commands("CI/CD")
    assert train[0].startswith("edge config") and deploy[-1].startswith("edge endpoint rollback")

    # --- Train on Vertex AI ---------------------------------------------------------------------
    edge("config", "-y", "--project", PROJECT, "--region", "europe-west2", "--bucket", bucket)
    assert any("edge setup --dry-run" in line for line in train)
    tracking = "mongodb://edge:secret@127.0.0.1:1/edge"
    dry = CliRunner().invoke(app, ["setup", "--dry-run"], env={"EDGE_TRACKING_URL": tracking})
    assert dry.exit_code == 0, dry.output
    assert "Dry run: nothing changed" in dry.output
    applied = CliRunner().invoke(app, ["setup"], env={"EDGE_TRACKING_URL": tracking})
    assert applied.exit_code == 0, applied.output
    assert emulated.cloud.secrets.value(f"projects/{PROJECT}/secrets/edge-tracking-url") == tracking.encode()
    assert any(line.startswith("edge image build trainer") for line in train)  # needs Docker: by digest
    # The trainer's job: its container command run as a local process, with Vertex AI's variables.
    assert "edge pipeline train --on vertex" in train
    jobs_account = f"edge-jobs@{PROJECT}.iam.gserviceaccount.com"
    trained = shell("pipeline", "train", "--on", "vertex", "--image", IMAGE)
    assert (repo / "models" / "metadata.json").exists(), trained
    # The model test suite judges it; only a model that passed is registered.
    assert "edge pipeline evaluate" in train
    shell("pipeline", "evaluate")
    (job,) = emulated.cloud.jobs.jobs.values()
    assert job.resource["jobSpec"].get("serviceAccount") == jobs_account
    # Inside the job, the jobs account (not the developer) read the tracking URL: setup's grant.
    (read,) = emulated.cloud.log.find(service="secretmanager", path="/versions/latest:access")
    assert (read.principal, read.status) == (f"serviceAccount:{jobs_account}", 200)

    # --- Deploy to Vertex AI --------------------------------------------------------------------
    for line in deploy:
        args = line.split()[1:]
        if args[:2] == ["model", "register"]:
            args = ["model", "register", "--image", IMAGE]
        if args[:1] == ["deploy"]:
            args = ["deploy", "--smoke-images", "5"]
        if args[:2] == ["endpoint", "rollback"]:
            # A rollback needs something to roll back to: a second release first, then back.
            (repo / "params.yaml").write_text(PARAMS.replace("epochs: 4", "epochs: 5"))
            shell("pipeline", "train", "--on", "vertex", "--image", IMAGE)
            shell("pipeline", "evaluate")
            edge("model", "gate", "--production", "registry")
            edge("model", "register", "--image", IMAGE)
            edge("deploy", "--smoke-images", "5")
        # Paths in the README are relative to the repository's root.
        args = [str(ROOT / a) if (ROOT / a).is_file() else a for a in args]
        edge(*args)
        if args[:2] == ["endpoint", "predict"]:
            (predicted,) = emulated.cloud.log.find(service="aiplatform", method="POST", path=":predict")[-1:]
            assert predicted.status == 200 and predicted.principal == emulated.cloud.owner
    status = json.loads(edge("endpoint", "status", "--json").stdout)
    assert [d["traffic"] for d in status["deployed"]] == [100]
    assert status["endpoint"].startswith(f"projects/{emulated.cloud.project.number}/")
    webapp = [line for line in section("Deploy to Vertex AI").splitlines() if "edge webapp deploy" in line]
    assert webapp
    edge("webapp", "deploy", "--image", WEBAPP)
    (service,) = emulated.run.services.values()
    assert service["template"]["containers"][0]["image"] == WEBAPP

    # --- CI/CD: the one-time gcloud steps, applied through the same stand-ins -------------------
    applied_steps = apply_gcloud(ci, emulated, bucket)
    assert applied_steps >= 4
    deployer = f"serviceAccount:edge-deployer@{PROJECT}.iam.gserviceaccount.com"
    policies = emulated.cloud.projects.policies
    for role in (
        "aiplatform.user",
        "artifactregistry.writer",
        "storage.objectAdmin",
        "iam.serviceAccountUser",
    ):
        assert deployer in policies.members(f"projects/{PROJECT}", f"roles/{role}")
    # Least privilege: CI deploys no webapp, so the deployer holds no Cloud Run role.
    assert deployer not in policies.members(f"projects/{PROJECT}", "roles/run.admin")
    # One binding per role: the README's lines add members, never a second binding for a role.
    for resource, policy in policies.policies.items():
        roles = [b["role"] for b in policy.get("bindings", [])]
        assert len(roles) == len(set(roles)), (resource, roles)
    # The deployer reads the bucket's own metadata (its region), which storage.objectAdmin cannot.
    bucket_policy = requests.get(
        f"{emulated.cloud.extra['storage'].url}/storage/v1/b/{bucket}/iam",
        headers={"authorization": f"Bearer {emulated.cloud.access.issue_token(emulated.cloud.owner)}"},
        timeout=10,
    ).json()
    assert {"role": "roles/storage.legacyBucketReader", "members": [deployer]} in bucket_policy["bindings"]
    print(f"rehearsal: {time.monotonic() - started:.1f} s wall time")


def apply_gcloud(lines: list[str], emulated: Emulation, bucket: str) -> int:
    """Apply the README's `gcloud` lines through the stand-ins' REST APIs, as the owner; how many."""
    cloud = emulated.cloud
    number = cloud.project.number
    token = cloud.access.issue_token(cloud.owner)
    auth = {"authorization": f"Bearer {token}"}
    text = " ; ".join(lines).replace("MY_PROJECT", PROJECT).replace("PROJECT_NUMBER", number)
    text = text.replace("ORG_ID", "org-id").replace("PROJECT_ID", CIRCLE_PROJECT)
    text = text.replace("MY_BUCKET", bucket)
    applied = 0
    loop = re.search(r"for role in ([^;]+); do (.+?); done", text)
    steps = re.split(r"\s*;\s*", text[: loop.start()] if loop else text)
    if loop:
        for role in loop.group(1).split():
            steps += [part.replace("$role", role) for part in re.split(r"\s*;\s*", loop.group(2))]
        steps += re.split(r"\s*;\s*", text[loop.end() :])
    for step in (s.strip() for s in steps):
        if not step.startswith("gcloud "):
            continue
        flags = dict(re.findall(r"--([\w-]+)=(\"[^\"]*\"|\S+)", step))
        flags = {k: v.strip('"') for k, v in flags.items()}
        if step.startswith("gcloud iam workload-identity-pools providers create-oidc"):
            mapping = dict(pair.split("=", 1) for pair in flags["attribute-mapping"].split(","))
            audiences = flags.get("allowed-audiences")
            emulated.sts.add_provider(
                Provider(
                    cloud.project,
                    flags["workload-identity-pool"],
                    step.split()[5],
                    issuer=flags["issuer-uri"],
                    allowed_audiences=audiences.split(",") if audiences else [],
                    mapping=mapping,
                    condition=flags.get("attribute-condition"),
                )
            )
        elif step.startswith("gcloud iam workload-identity-pools create"):
            pass  # the pool exists once a provider names it
        elif step.startswith("gcloud iam service-accounts create"):
            answer = requests.post(
                f"{cloud.iam.url}/v1/projects/{PROJECT}/serviceAccounts",
                json={"accountId": step.split()[4]},
                headers=auth,
                timeout=10,
            )
            assert answer.ok, answer.text
        elif step.startswith("gcloud projects add-iam-policy-binding"):
            _bind(f"{cloud.resourcemanager.url}/v3/projects/{PROJECT}", flags, auth)
        elif step.startswith("gcloud iam service-accounts add-iam-policy-binding"):
            email = step.split()[4]
            _bind(f"{cloud.iam.url}/v1/projects/{PROJECT}/serviceAccounts/{email}", flags, auth)
        elif step.startswith("gcloud storage buckets add-iam-policy-binding"):
            name = step.split()[4].removeprefix("gs://")
            _bind_bucket(f"{cloud.extra['storage'].url}/storage/v1/b/{name}/iam", flags, auth)
        else:
            raise AssertionError(f"the rehearsal does not know how to apply: {step}")
        applied += 1
    return applied


def _add_member(policy: dict[str, Any], role: str, member: str) -> None:
    """gcloud's add-iam-policy-binding: the member joins the role's one unconditional binding."""
    bindings = policy.setdefault("bindings", [])
    for binding in bindings:
        if binding["role"] == role and not binding.get("condition"):
            if member not in binding["members"]:
                binding["members"].append(member)
            return
    bindings.append({"role": role, "members": [member]})


def _bind(resource_url: str, flags: dict[str, str], auth: dict[str, str]) -> None:
    """Read the policy (version 3), add the member, write it with the etag read; on 409 (a change
    in between) read again and redo, as gcloud does."""
    for _ in range(5):
        policy = requests.post(
            f"{resource_url}:getIamPolicy",
            json={"options": {"requestedPolicyVersion": 3}},
            headers=auth,
            timeout=10,
        ).json()
        _add_member(policy, flags["role"], flags["member"])
        policy["version"] = 3
        answer = requests.post(
            f"{resource_url}:setIamPolicy", json={"policy": policy}, headers=auth, timeout=10
        )
        if answer.status_code != 409:
            assert answer.ok, answer.text
            return
    raise AssertionError(f"{resource_url}: the policy kept changing")


def _bind_bucket(iam_url: str, flags: dict[str, str], auth: dict[str, str]) -> None:
    """The same on a bucket, through Cloud Storage's JSON API (412 on a stale etag)."""
    for _ in range(5):
        policy = requests.get(
            iam_url, params={"optionsRequestedPolicyVersion": 3}, headers=auth, timeout=10
        ).json()
        _add_member(policy, flags["role"], flags["member"])
        policy["version"] = 3
        answer = requests.put(iam_url, json=policy, headers=auth, timeout=10)
        if answer.status_code not in (409, 412):
            assert answer.ok, answer.text
            return
    raise AssertionError(f"{iam_url}: the policy kept changing")
