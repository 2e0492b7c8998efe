"""Errors of the cloud path, each a message that says what went wrong and what to do about it.

Imports no Google SDK: the CLI catches `CloudError` without loading the clients.
"""

from __future__ import annotations

from typing import Any


class CloudError(Exception):
    """A Google Cloud call failed in a way the user can act on; the message says how."""


def explain(exc: BaseException, doing: str) -> CloudError:
    """Turn an api_core error (403, 429, 404...) into a CloudError that says what to do.

    Google's `google.rpc.ErrorInfo` (api_core's `reason` and `metadata`) tells apart what a bare
    403 does not: a project that does not exist, an API that is disabled, a missing permission.
    """
    code = getattr(exc, "code", None)
    message = _message(exc)
    specific = _from_error_info(exc)
    if specific:
        return CloudError(f"{doing} failed: {specific}")
    if code == 400 and "Service account" in message and "does not exist" in message:
        return CloudError(
            f"{doing} failed: {message} (a new service account takes up to a minute to be visible to "
            "IAM: run the same command again in a minute)"
        )
    hint = {
        400: "the request was refused as invalid: check the setting it names in edge.yaml "
        "(`edge config show`)",
        401: "the credentials were refused: run `gcloud auth application-default login` again",
        403: "permission denied: check that the APIs are enabled (`edge setup`), that billing is on, "
        "and that your account has the role this call needs",
        404: "not found: check the project, region and names in edge.yaml (`edge config show`), "
        "or run `edge setup`",
        409: "it already exists, or another change is in flight: run the command again",
        429: "quota exceeded or too many requests: wait a minute and retry, or ask for more quota "
        "in the console (IAM & Admin > Quotas)",
    }.get(int(code) if isinstance(code, int) else 0, "")
    text = f"{doing} failed: {message}"
    return CloudError(f"{text} ({hint})" if hint else text)


def _from_error_info(exc: BaseException) -> str | None:
    """One sentence for the ErrorInfo reasons a user can act on, or None."""
    reason = getattr(exc, "reason", None)
    metadata: dict[str, str] = dict(getattr(exc, "metadata", None) or {})
    if reason == "SERVICE_DISABLED":
        service = metadata.get("service", "an API")
        project = metadata.get("consumer", "the project").removeprefix("projects/")
        return (
            f"{service} is not enabled on project {project}: run `edge setup` (or `gcloud services "
            f"enable {service}`); if it was enabled in the last few minutes, wait and run this again"
        )
    if reason == "CONSUMER_INVALID":
        project = metadata.get("consumer", "").removeprefix("projects/")
        return (
            f"project {project!r} does not exist or your account cannot see it: check `project` in "
            "edge.yaml (`edge config show`) and the account you are logged in with"
        )
    if reason == "IAM_PERMISSION_DENIED":
        permission = metadata.get("permission", "a permission")
        resource = metadata.get("resource", "the resource")
        role = granting_role(permission)
        grant = f"{role}, which holds it" if role else "a role that holds it"
        return (
            f"permission {permission} denied on {resource}: grant the account that runs this {grant} "
            "(the README's CI/CD section lists the roles of CI's deployer)"
        )
    return None


# The role the README and docs/cloud.md grant for each permission the cloud path needs, by prefix
# (Google's role reference: https://cloud.google.com/iam/docs/roles-permissions). A refusal then
# says what to grant, not only what is missing.
GRANTING_ROLES = (
    ("storage.buckets.get", "roles/storage.legacyBucketReader on the bucket"),
    ("storage.objects.", "roles/storage.objectAdmin on the bucket"),
    ("aiplatform.customJobs.", "roles/aiplatform.user"),
    ("aiplatform.models.", "roles/aiplatform.user"),
    ("aiplatform.endpoints.", "roles/aiplatform.user"),
    ("iam.serviceAccounts.actAs", "roles/iam.serviceAccountUser"),
    ("artifactregistry.repositories.uploadArtifacts", "roles/artifactregistry.writer"),
    ("run.services.", "roles/run.admin"),
    ("secretmanager.versions.access", "roles/secretmanager.secretAccessor on the secret"),
)


def granting_role(permission: str) -> str | None:
    """The role our docs grant for `permission`, or None for one they do not mention."""
    if permission.endswith(("IamPolicy", ".setIamPolicy")):
        return None  # policies are the admin roles' business, not the ones the docs grant
    return next((role for prefix, role in GRANTING_ROLES if permission.startswith(prefix)), None)


def is_registry_answer(exc: BaseException) -> bool:
    """Whether a 404 is the API saying "no such resource" (Google's JSON NOT_FOUND error), rather
    than a path no API serves (an HTML page from the front end: a wrong endpoint or region)."""
    response = getattr(exc, "response", None)
    if response is None or getattr(exc, "code", None) != 404:
        return False
    try:
        error = response.json().get("error") or {}
    except ValueError:
        return False
    return bool(error.get("status") == "NOT_FOUND")


def _message(exc: BaseException) -> str:
    message: Any = getattr(exc, "message", None) or str(exc)
    # api_core prefixes "<METHOD> <url>: "; the URL says nothing the user needs.
    text = str(message)
    if text.split(" ", 1)[0] in {"GET", "POST", "PATCH", "PUT", "DELETE"} and ": " in text:
        text = text.split(": ", 1)[1]
    return text.strip()
