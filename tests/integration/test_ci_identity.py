"""Keyless CI as CircleCI runs it: `.ci/google-credentials`, the README's provider, google-auth's
real `external_account` flow, the STS and IAM Credentials stand-ins, and the deployer's roles.

CircleCI's side is played by a local OIDC issuer (its discovery document and keys on 127.0.0.1) and a
stand-in `circleci` command on the PATH (`circleci run oidc get`, as in a job) that mints tokens
signed by it, with CircleCI's claims and a short life (tests/standin/oidc.py); the STS stand-in
verifies their signatures against the issuer's published keys. The README's one-time `gcloud`
lines are applied through the stand-ins as the project's owner.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cloud_env import APIS, write_settings
from tests.integration.test_rehearsal import CIRCLE_PROJECT, PROJECT, apply_gcloud, commands
from tests.standin.emulate import Emulation, emulation
from tests.standin.oidc import CIRCLECI_ISSUER, CIRCLECI_SUB, OidcIssuer, write_circleci_command
from tests.standin.vertex_endpoints import ProcessServers
from tests.standin.vertex_jobs import ScriptedRunner

ROOT = Path(__file__).resolve().parents[2]
ORG = "org-id"  # CircleCI's organization id, the README's ORG_ID
DEPLOYER = f"edge-deployer@{PROJECT}.iam.gserviceaccount.com"
REGION = "europe-west2"
BUCKET = "edge-ci-bucket"


@pytest.fixture
def ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The local cloud after `edge setup` and the README's CI/CD lines; a CircleCI job's shell."""
    bin_dir = tmp_path / "bin"
    issuer = OidcIssuer(CIRCLECI_ISSUER.format(org=ORG)).start()
    fake = write_circleci_command(bin_dir, issuer, ORG, CIRCLE_PROJECT)
    with (
        issuer,
        emulation(
            project=PROJECT,
            runner=ScriptedRunner(),
            servers=ProcessServers(bin_dir=str(Path(sys.executable).parent)),
            enabled=(*APIS, "sts.googleapis.com"),
        ) as emulated,
    ):
        emulated.sts.trust(issuer.issuer, issuer.url)
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
        yield {
            "emulated": emulated,
            "env": env,
            "minted": bin_dir / "minted",
            "tmp": tmp_path,
            "issuer": issuer,
        }


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


def _exchange(emulated: Emulation, token: str) -> requests.Response:
    provider = next(iter(emulated.sts.providers))
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
    issuer: OidcIssuer = ci["issuer"]
    (provider,) = emulated.sts.providers.values()
    claims = {
        "iss": f"https://oidc.circleci.com/org/{ORG}",
        "aud": f"https://iam.googleapis.com/{provider.name}",
        "sub": CIRCLECI_SUB,
        "exp": time.time() + 3600,
        "oidc.circleci.com/project-id": CIRCLE_PROJECT,
    }
    assert _exchange(emulated, issuer.mint(claims)).status_code == 200
    expired = _exchange(emulated, issuer.mint({**claims, "exp": time.time() - 1}))
    assert (expired.status_code, expired.json()["error"]) == (400, "invalid_grant")
    other = _exchange(emulated, issuer.mint({**claims, "oidc.circleci.com/project-id": "another-project"}))
    assert (other.status_code, other.json()["error"]) == (400, "unauthorized_client")
    # CircleCI's V2 `sub` as google.subject: longer than the 127 bytes Google allows.
    provider.mapping = {**provider.mapping, "google.subject": "assertion.sub"}
    too_long = _exchange(emulated, issuer.mint(claims))
    assert too_long.status_code == 400
    assert "exceeds the 127 bytes limit" in too_long.json()["error_description"]


def test_sts_takes_only_tokens_the_issuer_signed(ci: dict[str, Any]) -> None:
    emulated: Emulation = ci["emulated"]
    issuer: OidcIssuer = ci["issuer"]
    (provider,) = emulated.sts.providers.values()
    claims = {
        "iss": issuer.issuer,
        "aud": f"https://iam.googleapis.com/{provider.name}",
        "sub": CIRCLECI_SUB,
        "exp": time.time() + 3600,
        "oidc.circleci.com/project-id": CIRCLE_PROJECT,
    }
    signed = issuer.mint(claims)
    assert _exchange(emulated, signed).status_code == 200
    # The same claims under another key (with the issuer's key id), or with no signature at all.
    forger = OidcIssuer(issuer.issuer)
    forger.kid = issuer.kid
    unsigned = signed.rsplit(".", 1)[0] + "." + base64.urlsafe_b64encode(b"signature").decode().rstrip("=")
    # Claims changed after signing (a longer life): the signature no longer matches them.
    tampered_claims = {**claims, "exp": claims["exp"] + 3600}
    payload = base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).decode().rstrip("=")
    header, _, signature = signed.split(".")
    for token in (forger.mint(claims), unsigned, f"{header}.{payload}.{signature}"):
        refused = _exchange(emulated, token)
        assert refused.status_code == 400, refused.text
        assert refused.json() == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    # An issuer whose keys cannot be fetched signs nothing Google accepts.
    emulated.sts.issuer_urls.pop(issuer.issuer)
    unreachable = _exchange(emulated, signed)
    assert unreachable.status_code == 400
    assert "Unable to fetch the OpenID configuration" in unreachable.json()["error_description"]
