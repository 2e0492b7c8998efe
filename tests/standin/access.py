"""What decides whether a call to Google Cloud succeeds, before the API itself looks at it.

One `Access` is shared by every stand-in of a `LocalCloud`, and every guarded route goes through it
in the order Google's front ends apply (the error bodies are theirs, with `google.rpc.ErrorInfo`):
1. the caller: a bearer token this cloud issued, mapped to a principal (`user:...`,
   `serviceAccount:...`); none -> 401 UNAUTHENTICATED (reason CREDENTIALS_MISSING);
2. the project named in the path, by id or number: one this cloud knows, else 403 PERMISSION_DENIED
   "Permission denied on resource project X." (reason CONSUMER_INVALID). Nothing crosses projects;
3. the API on that project: enabled, and past the delay enabling takes to propagate, else 403
   SERVICE_DISABLED with the service and its activation URL, as Google sends it;
4. the permission the method needs (Google's per-method permission reference), held through a role
   (tests/standin/roles.py) bound to the principal in the project's IAM policy or in the policy of
   the resource itself (bucket, secret, service account, Cloud Run service), else 403
   PERMISSION_DENIED naming the permission (reason IAM_PERMISSION_DENIED).

IAM policies live here, keyed by resource name, so the Resource Manager, Secret Manager, IAM and
Cloud Run stand-ins edit the very policies that later calls are judged by. A policy that binds a
service account that does not exist, or that was created less than `account_propagation` seconds
ago, is refused with 400 "Service account ... does not exist." (Google's eventual consistency:
https://cloud.google.com/iam/docs/access-change-propagation).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.standin.roles import grants
from tests.standin.server import ApiError, Request

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
# The StandIn's short name -> the API's service name in Service Usage.
API_NAMES = {
    "aiplatform": "aiplatform.googleapis.com",
    "serviceusage": "serviceusage.googleapis.com",
    "artifactregistry": "artifactregistry.googleapis.com",
    "iam": "iam.googleapis.com",
    "secretmanager": "secretmanager.googleapis.com",
    "resourcemanager": "cloudresourcemanager.googleapis.com",
    "run": "run.googleapis.com",
    "storage": "storage.googleapis.com",
    "sts": "sts.googleapis.com",
    "iamcredentials": "iamcredentials.googleapis.com",
}
API_TITLES = {
    "aiplatform.googleapis.com": "Vertex AI API",
    "serviceusage.googleapis.com": "Service Usage API",
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "secretmanager.googleapis.com": "Secret Manager API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "run.googleapis.com": "Cloud Run Admin API",
    "storage.googleapis.com": "Cloud Storage API",
    "iamcredentials.googleapis.com": "IAM Service Account Credentials API",
    "sts.googleapis.com": "Security Token Service API",
    "logging.googleapis.com": "Cloud Logging API",
}
# Service Usage answers on a new project: it is how every other API gets enabled (`gcloud services
# enable` works on a project fresh from the console). Every other API starts disabled.
ALWAYS_ON = frozenset({"serviceusage.googleapis.com"})
EVERYONE = ("allUsers",)


def error_info(reason: str, domain: str, **metadata: str) -> dict[str, Any]:
    return {"@type": ERROR_INFO, "reason": reason, "domain": domain, "metadata": metadata}


@dataclass
class Project:
    project_id: str
    number: str
    # API name -> time.monotonic() from which it answers (enabling takes a while to propagate).
    enabled: dict[str, float] = field(default_factory=dict)

    def is_enabled(self, api: str) -> bool:
        since = self.enabled.get(api)
        return api in ALWAYS_ON or (since is not None and time.monotonic() >= since)


class Policies:
    """IAM policies with etags, by resource name: read-modify-write; a stale etag is refused (409)."""

    def __init__(self, access: Access | None = None) -> None:
        self.policies: dict[str, dict[str, Any]] = {}
        self.access = access

    def get(self, resource: str) -> dict[str, Any]:
        policy = self.policies.get(resource) or {"version": 1, "bindings": []}
        return {**policy, "etag": self._etag(policy)}

    def set(self, resource: str, policy: dict[str, Any]) -> dict[str, Any]:
        current = self.get(resource)
        if policy.get("etag") and policy["etag"] != current["etag"]:
            raise ApiError(409, "There were concurrent policy changes. Please retry.", "ABORTED")
        if self.access is not None:
            self.access.check_members(policy)
        stored = {k: v for k, v in policy.items() if k != "etag"}
        stored.setdefault("version", 1)
        self.policies[resource] = stored
        return self.get(resource)

    def bind(self, resource: str, role: str, member: str) -> None:
        """Add one binding directly (what a test or the rehearsal sets up as already done)."""
        policy = self.policies.setdefault(resource, {"version": 1, "bindings": []})
        for binding in policy["bindings"]:
            if binding["role"] == role:
                if member not in binding["members"]:
                    binding["members"].append(member)
                return
        policy["bindings"].append({"role": role, "members": [member]})

    def roles_of(self, resource: str, members: set[str]) -> list[str]:
        """The roles bound on `resource` to any of `members` (a principal and the sets it is in)."""
        policy = self.policies.get(resource) or {}
        return [
            b["role"]
            for b in policy.get("bindings", [])
            if members & set(b.get("members", [])) or any(e in b.get("members", []) for e in EVERYONE)
        ]

    @staticmethod
    def _etag(policy: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).digest()[:8]
        return base64.b64encode(digest).decode()

    def members(self, resource: str, role: str) -> list[str]:
        for binding in self.get(resource)["bindings"]:
            if binding["role"] == role:
                return list(binding.get("members", []))
        return []


class Access:
    """Projects, principals, API state and IAM policies of one local Google Cloud."""

    def __init__(self, enable_delay: float = 0.0, account_propagation: float = 0.0) -> None:
        self.enable_delay = enable_delay
        self.account_propagation = account_propagation
        self.projects: dict[str, Project] = {}
        self.tokens: dict[str, str] = {}
        # principal -> the principal sets it belongs to (a federated identity's attributes)
        self.memberships: dict[str, set[str]] = {}
        self.policies = Policies(self)
        # service account email -> time.monotonic() of its creation
        self.accounts: dict[str, float] = {}
        # Where credentials files handed to jobs and servers go (the LocalCloud's own folder).
        self.folder: Path | None = None
        self._lock = threading.Lock()

    # --- projects ---------------------------------------------------------------------------------
    def add_project(
        self, project_id: str, number: str | None = None, enabled: tuple[str, ...] = ()
    ) -> Project:
        number = number or str(100_000_000_000 + int(hashlib.sha256(project_id.encode()).hexdigest()[:9], 16))
        project = Project(project_id, number)
        self.projects[project_id] = project
        for api in enabled:
            project.enabled[api] = 0.0
        return project

    def find(self, id_or_number: str) -> Project | None:
        for project in self.projects.values():
            if id_or_number in (project.project_id, project.number):
                return project
        return None

    def project(self, id_or_number: str, api: str) -> Project:
        """The project named by id or number; 403 as Google answers for one that does not exist."""
        project = self.find(id_or_number)
        if project is None:
            raise ApiError(
                403,
                f"Permission denied on resource project {id_or_number}.",
                details=[
                    error_info(
                        "CONSUMER_INVALID", "googleapis.com", service=api, consumer=f"projects/{id_or_number}"
                    )
                ],
            )
        return project

    def enable(self, project: Project, apis: list[str]) -> None:
        """Enable `apis`; each answers once `enable_delay` seconds have passed."""
        ready = time.monotonic() + self.enable_delay
        with self._lock:
            for api in apis:
                project.enabled.setdefault(api, ready)

    def require_enabled(self, project: Project, api: str) -> None:
        if project.is_enabled(api):
            return
        title = API_TITLES.get(api, api)
        url = f"https://console.developers.google.com/apis/api/{api}/overview?project={project.number}"
        raise ApiError(
            403,
            f"{title} has not been used in project {project.number} before or it is disabled. Enable it "
            f"by visiting {url} then retry. If you enabled this API recently, wait a few minutes for the "
            "action to propagate to our systems and retry.",
            details=[
                error_info(
                    "SERVICE_DISABLED",
                    "googleapis.com",
                    service=api,
                    consumer=f"projects/{project.number}",
                    activationUrl=url,
                    serviceTitle=title,
                    containerInfo=project.number,
                ),
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{"description": "Google developers console API activation", "url": url}],
                },
            ],
        )

    # --- principals -------------------------------------------------------------------------------
    def issue_token(self, principal: str) -> str:
        """A bearer token that identifies `principal` (`user:a@b.c`, `serviceAccount:...`)."""
        token = "ya29.standin-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = principal
        return token

    def principal(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        if not header:
            raise ApiError(
                401,
                "Request is missing required authentication credential. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                "UNAUTHENTICATED",
                details=[error_info("CREDENTIALS_MISSING", "googleapis.com", method=request.path)],
            )
        token = header.removeprefix("Bearer ").strip()
        principal = self.tokens.get(token)
        if principal is None:
            raise ApiError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential.",
                "UNAUTHENTICATED",
                details=[error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", "googleapis.com")],
            )
        return principal

    def credentials_file(self, principal: str, folder: Path) -> Path:
        """An application-default credentials file for `principal`, as `gcloud auth
        application-default login` writes it, holding a token this cloud issued (valid 12 h, so
        google-auth never tries to refresh it at Google)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{principal.split(':', 1)[-1].replace('@', '_at_')}.json"
        expiry = (datetime.now(UTC) + timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
        info = {
            "type": "authorized_user",
            "client_id": "standin.apps.googleusercontent.com",
            "client_secret": "standin",
            "refresh_token": "standin-refresh-" + secrets.token_urlsafe(8),
            "token": self.issue_token(principal),
            "expiry": expiry,
        }
        path.write_text(json.dumps(info))
        return path

    # --- service accounts and policies ------------------------------------------------------------
    def account_created(self, email: str) -> None:
        self.accounts[email] = time.monotonic()

    def check_members(self, policy: dict[str, Any]) -> None:
        """Refuse a binding of a service account of these projects that does not exist (yet)."""
        now = time.monotonic()
        for binding in policy.get("bindings") or []:
            for member in binding.get("members") or []:
                if not member.startswith("serviceAccount:"):
                    continue
                email = member.removeprefix("serviceAccount:")
                domain = email.split("@", 1)[-1]
                if not any(domain == f"{p}.iam.gserviceaccount.com" for p in self.projects):
                    continue  # Google's own agents and other projects' accounts are not ours to judge
                created = self.accounts.get(email)
                if created is None or now - created < self.account_propagation:
                    raise ApiError(400, f"Service account {email} does not exist.", "INVALID_ARGUMENT")

    def allowed(self, principal: str, permission: str, resources: list[str]) -> bool:
        members = {principal, *self.memberships.get(principal, set())}
        return any(
            grants(role, permission)
            for resource in resources
            for role in self.policies.roles_of(resource, members)
        )

    def require(self, principal: str, permission: str, resources: list[str], shown: str, api: str) -> None:
        """403 PERMISSION_DENIED naming `permission` unless a role on one of `resources` holds it."""
        if self.allowed(principal, permission, resources):
            return
        raise ApiError(
            403,
            f"Permission '{permission}' denied on resource '{shown}' (or it may not exist).",
            details=[
                error_info(
                    "IAM_PERMISSION_DENIED", "iam.googleapis.com", permission=permission, resource=shown
                )
            ],
        )

    def guard(self, request: Request, service: str, permission: str, resource: str | None) -> Project:
        """Run checks 1-4 for a request on a route whose path names `{project}`."""
        api = API_NAMES.get(service, service)
        principal = self.principal(request)
        request.principal = principal
        project = self.project(request.params.get("project", ""), api)
        self.require_enabled(project, api)
        resources = [f"projects/{project.project_id}"]
        if resource:
            resources.append(
                resource.replace(f"projects/{project.number}/", f"projects/{project.project_id}/")
            )
        shown = resource or f"projects/{project.project_id}"
        self.require(principal, permission, resources, f"//{api}/{shown}", api)
        return project

    def act_as(self, principal: str, project: Project, email: str, api: str) -> None:
        """Starting something that runs as `email` needs iam.serviceAccounts.actAs on it."""
        account = f"projects/{project.project_id}/serviceAccounts/{email}"
        resources = [f"projects/{project.project_id}", account]
        self.require(
            principal, "iam.serviceAccounts.actAs", resources, f"//iam.googleapis.com/{account}", api
        )
