"""Keyless CI as CircleCI runs it: `.ci/google-credentials`, the README's provider, google-auth's
real `external_account` flow, the STS and IAM Credentials stand-ins, and the deployer's roles.

CircleCI's side is played by a stand-in `circleci` command on the PATH (`circleci run oidc get`,
as in a job) that mints tokens with CircleCI's claims and a short life; the README's one-time
`gcloud` lines are applied through the stand-ins as the project's owner.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cloud_env import APIS, write_settings
from tests.integration.test_rehearsal import CIRCLE_PROJECT, PROJECT, apply_gcloud, commands
from tests.standin.emulate import Emulation, emulation
from tests.standin.vertex_endpoints import ProcessServers
from tests.standin.vertex_jobs import ScriptedRunner

ROOT = Path(__file__).resolve().parents[2]
ORG = "org-id"  # CircleCI's organization id, the README's ORG_ID
DEPLOYER = f"edge-deployer@{PROJECT}.iam.gserviceaccount.com"
REGION = "europe-west2"
BUCKET = "edge-ci-bucket"
# CircleCI's `sub` for $CIRCLE_OIDC_TOKEN_V2: three UUIDs, the repository and the ref (> 127 bytes).
SUB = (
    f"org/{uuid.UUID(int=1)}/project/{uuid.UUID(int=2)}/user/{uuid.UUID(int=3)}"
    "/vcs-origin/github.com/edge-org/edge/vcs-ref/refs/heads/main"
)
FAKE_CIRCLECI = """#!{python}
# CircleCI's `circleci run oidc get [--claims '{{"aud": ...}}']`: prints a fresh OIDC token.
import base64, json, os, sys, time

args = sys.argv[1:]
if args[:3] != ["run", "oidc", "get"]:
    sys.exit("this circleci stand-in knows `run oidc get` only")
claims = json.loads(args[args.index("--claims") + 1]) if "--claims" in args else {{}}
now = int(time.time())
payload = {{
    "iss": "https://oidc.circleci.com/org/{org}",
    "aud": claims.get("aud", "{org}"),
    "sub": "{sub}",
    "iat": now,
    "exp": now + int(os.environ.get("CIRCLECI_TOKEN_SECONDS", "3600")),
    "oidc.circleci.com/project-id": "{project}",
    "oidc.circleci.com/vcs-origin": "github.com/edge-org/edge",
    "oidc.circleci.com/vcs-ref": "refs/heads/main",
}}
part = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
with open(os.path.join(os.path.dirname(__file__), "minted"), "a") as log:
    log.write(str(now) + "\\n")
print(part({{"alg": "RS256", "typ": "JWT"}}) + "." + part(payload) + ".c2lnbmF0dXJl")
"""


@pytest.fixture
def ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The local cloud after `edge setup` and the README's CI/CD lines; a CircleCI job's shell."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "circleci"
    fake.write_text(FAKE_CIRCLECI.format(python=sys.executable, org=ORG, sub=SUB, project=CIRCLE_PROJECT))
    fake.chmod(0o755)
    with emulation(
        project=PROJECT,
        runner=ScriptedRunner(),
        servers=ProcessServers(bin_dir=str(Path(sys.executable).parent)),
        enabled=(*APIS, "sts.googleapis.com"),
    ) as emulated:
        emulator = emulated.env["STORAGE_EMULATOR_HOST"]
        requests.post(
            f"{emulator}/storage/v1/b", params={"project": PROJECT}, json={"name": BUCKET}, timeout=10
        )
        requests.patch(f"{emulator}/storage/v1/b/{BUCKET}", json={"location": REGION}, timeout=10)
        assert apply_gcloud(commands("CI/CD"), emulated, BUCKET) >= 4
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path / "home"),
            "GCP_WIF_PROVIDER": next(iter(emulated.sts.providers)),
            "GCP_SERVICE_ACCOUNT": DEPLOYER,
            # What CircleCI sets when the job starts (a token that lives an hour from then).
            "CIRCLE_OIDC_TOKEN_V2": subprocess.run(
                [str(fake), "run", "oidc", "get"], capture_output=True, text=True, check=True
            ).stdout.strip(),
        }
        (tmp_path / "home").mkdir()
        yield {"emulated": emulated, "env": env, "minted": bin_dir / "minted", "tmp": tmp_path}


def credential_file(ci: dict[str, Any]) -> Path:
    """`make google-credentials` as the CI job runs it; Google's two hosts pointed at the stand-ins."""
    emulated: Emulation = ci["emulated"]
    done = subprocess.run(
        [str(ROOT / ".ci" / "google-credentials")], env=ci["env"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout.replace("https://sts.googleapis.com", emulated.sts_url)
    text = text.replace("https://iamcredentials.googleapis.com", emulated.iamcredentials_url)
    path = Path(ci["env"]["HOME"]) / "gcp-credentials.json"
    path.write_text(text)
    return path


def test_a_ci_job_longer_than_its_token_keeps_its_google_access(
    ci: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.cloud.settings import load
    from edge.cloud.training import VertexTraining

    emulated: Emulation = ci["emulated"]
    for name, value in emulated.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", f"{ci['env']['PATH']}:{Path(sys.executable).parent}")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credential_file(ci)))
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")  # as .circleci/config.yml sets
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.delenv("EDGE_CREDENTIALS", raising=False)
    # An hour, shortened: CircleCI's token lives 3 s, Google's tokens 1 s (google-auth then
    # refreshes before every call, as it would once an hour has passed).
    monkeypatch.setenv("CIRCLECI_TOKEN_SECONDS", "3")
    emulated.sts.lifetime = emulated.credentials.lifetime = 1
    settings = load(write_settings(ci["tmp"], bucket=BUCKET))

    training = VertexTraining(settings)
    training.check_bucket()  # the deployer reads the bucket's region: storage.buckets.get
    time.sleep(3.5)  # CircleCI's first token has expired
    training.check_bucket()

    exchanges = emulated.cloud.log.find(service="sts", path="/v1/token")
    assert exchanges and all(e.status == 200 for e in exchanges), [str(e) for e in exchanges]
    reads = emulated.cloud.log.find(service="storage", method="GET", path=f"/b/{BUCKET}")
    assert [(r.principal, r.status) for r in reads][-2:] == [(f"serviceAccount:{DEPLOYER}", 200)] * 2
    # Each exchange took a fresh token from CircleCI (the one at job start is not used at all).
    assert len(ci["minted"].read_text().splitlines()) >= 1 + len(exchanges)


def _exchange(emulated: Emulation, claims: dict[str, Any]) -> requests.Response:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    provider = next(iter(emulated.sts.providers))
    token = f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"
    return requests.post(
        f"{emulated.sts_url}/v1/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "audience": f"//iam.googleapis.com/{provider}",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": token,
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "scope": "https://www.googleapis.com/auth/cloud-platform",
        },
        timeout=10,
    )


def test_sts_applies_the_readme_provider_as_google_does(ci: dict[str, Any]) -> None:
    emulated: Emulation = ci["emulated"]
    (provider,) = emulated.sts.providers.values()
    claims = {
        "iss": f"https://oidc.circleci.com/org/{ORG}",
        "aud": f"https://iam.googleapis.com/{provider.name}",
        "sub": SUB,
        "exp": time.time() + 3600,
        "oidc.circleci.com/project-id": CIRCLE_PROJECT,
    }
    assert _exchange(emulated, claims).status_code == 200
    expired = _exchange(emulated, {**claims, "exp": time.time() - 1})
    assert (expired.status_code, expired.json()["error"]) == (400, "invalid_grant")
    other = _exchange(emulated, {**claims, "oidc.circleci.com/project-id": "another-project"})
    assert (other.status_code, other.json()["error"]) == (400, "unauthorized_client")
    # CircleCI's V2 `sub` as google.subject: longer than the 127 bytes Google allows.
    provider.mapping = {**provider.mapping, "google.subject": "assertion.sub"}
    too_long = _exchange(emulated, claims)
    assert too_long.status_code == 400
    assert "exceeds the 127 bytes limit" in too_long.json()["error_description"]
