"""A refused call says what is missing and what to grant, in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions

from edge.cloud.errors import GRANTING_ROLES, explain, granting_role
from tests.integration.test_rehearsal import section
from tests.standin.roles import ROLES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cloud.md"


def _refused(permission: str, resource: str) -> exceptions.GoogleAPICallError:
    """A 403 as Google sends it: the message and a google.rpc.ErrorInfo naming the permission."""
    response = requests.Response()
    response.status_code = 403
    response.request = requests.Request("GET", "https://storage.googleapis.com/storage/v1/b/x").prepare()
    response._content = json.dumps(
        {
            "error": {
                "code": 403,
                "message": f"Permission '{permission}' denied on resource (or it may not exist).",
                "status": "PERMISSION_DENIED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "IAM_PERMISSION_DENIED",
                        "domain": "iam.googleapis.com",
                        "metadata": {"permission": permission, "resource": resource},
                    }
                ],
            }
        }
    ).encode()
    return exceptions.from_http_response(response)  # type: ignore[no-untyped-call]


def test_a_missing_permission_names_the_role_the_readme_grants_for_it() -> None:
    bucket = "//storage.googleapis.com/projects/_/buckets/edge-bucket"
    message = str(explain(_refused("storage.buckets.get", bucket), "reading bucket edge-bucket"))
    assert message == (
        f"reading bucket edge-bucket failed: permission storage.buckets.get denied on {bucket}: grant "
        "the account that runs this roles/storage.legacyBucketReader on the bucket, which holds it "
        "(the README's CI/CD section lists the roles of CI's deployer)"
    )
    assert "\n" not in message


def test_a_permission_the_docs_grant_no_role_for_asks_for_a_role_that_holds_it() -> None:
    message = str(explain(_refused("aiplatform.endpoints.setIamPolicy", "endpoint"), "sharing"))
    assert "grant the account that runs this a role that holds it" in message
    assert granting_role("compute.instances.create") is None


@pytest.mark.parametrize(("prefix", "role"), GRANTING_ROLES)
def test_each_role_named_holds_the_permission_and_the_docs_grant_it(prefix: str, role: str) -> None:
    name = role.split()[0]
    # The stand-ins' table is copied from Google's role reference (tests/standin/roles.py).
    assert any(p.startswith(prefix) for p in ROLES[name]), (name, prefix)
    readme_ci = section("CI/CD")
    granted_in_docs = name.removeprefix("roles/") in readme_ci or name in DOCS.read_text()
    assert granted_in_docs, f"{name} is granted neither in the README's CI/CD section nor in docs/cloud.md"
