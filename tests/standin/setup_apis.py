"""Recording doubles of the APIs `edge setup` calls: Service Usage, Artifact Registry, IAM, Secret
Manager and Resource Manager (project IAM policy). Each keeps the state its real service keeps,
answers 404/409 as it does, and logs every request on its StandIn.

Routes follow the official clients' REST bindings (google-cloud-* `transports/rest_base.py`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from tests.standin.server import ApiError, Request, StandIn

SERVICE_STATE = {"DISABLED": 1, "ENABLED": 2}


class ServiceUsage:
    """services.list / get / enable / batchEnable; batchEnable is an operation polled once."""

    TYPE = "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse"

    def __init__(self, standin: StandIn, enabled: set[str] | None = None) -> None:
        self.enabled: dict[str, set[str]] = {}
        self.default_enabled = set(enabled or set())
        standin.route("GET", "/v1/projects/{project}/services")(self.list)
        standin.route("GET", "/v1/projects/{project}/services/{service}")(self.get)
        standin.route("POST", "/v1/projects/{project}/services:batchEnable")(self.batch_enable)
        standin.route("POST", "/v1/projects/{project}/services/{service}:enable")(self.enable)
        self.standin = standin

    def _project(self, project: str) -> set[str]:
        return self.enabled.setdefault(project, set(self.default_enabled))

    def _service(self, project: str, service: str) -> dict[str, Any]:
        state = "ENABLED" if service in self._project(project) else "DISABLED"
        return {
            "name": f"projects/{project}/services/{service}",
            "parent": f"projects/{project}",
            "config": {"name": service},
            "state": SERVICE_STATE[state],
        }

    def list(self, request: Request) -> dict[str, Any]:
        project = request.params["project"]
        wanted = request.query.get("filter", "")
        if wanted and wanted != "state:ENABLED":
            raise ApiError(400, f"Invalid filter {wanted!r}; the stand-in knows state:ENABLED only.")
        return {"services": [self._service(project, s) for s in sorted(self._project(project))]}

    def get(self, request: Request) -> dict[str, Any]:
        return self._service(request.params["project"], request.params["service"])

    def batch_enable(self, request: Request) -> dict[str, Any]:
        project = request.params["project"]
        ids = (request.body or {}).get("serviceIds") or []
        if not ids or len(ids) > 20:
            raise ApiError(400, "serviceIds must name 1 to 20 services.")
        unknown = [s for s in ids if not s.endswith(".googleapis.com")]
        if unknown:
            raise ApiError(403, f"Service {unknown[0]} not found or permission denied.", "PERMISSION_DENIED")
        self._project(project).update(ids)
        services = [self._service(project, s) for s in ids]
        return self.standin.operations.pending("", self.TYPE, {"services": services}, polls=1)

    def enable(self, request: Request) -> dict[str, Any]:
        project, service = request.params["project"], request.params["service"]
        self._project(project).add(service)
        return self.standin.operations.done(
            "type.googleapis.com/google.api.serviceusage.v1.EnableServiceResponse",
            {"service": self._service(project, service)},
        )


class ArtifactRegistry:
    """repositories.get / create (an operation polled once, like the real one)."""

    TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"

    def __init__(self, standin: StandIn) -> None:
        self.repositories: dict[str, dict[str, Any]] = {}
        base = "/v1/projects/{project}/locations/{location}/repositories"
        standin.route("GET", base + "/{repository}")(self.get)
        standin.route("POST", base)(self.create)
        self.standin = standin

    def get(self, request: Request) -> dict[str, Any]:
        name = request.path.removeprefix("/v1/")
        if name not in self.repositories:
            raise ApiError(404, f"Requested entity was not found. ({name})")
        return self.repositories[name]

    def create(self, request: Request) -> dict[str, Any]:
        parent = request.path.removeprefix("/v1/").removesuffix("/repositories")
        repository_id = request.query.get("repositoryId")
        if not repository_id:
            raise ApiError(400, "repository_id is required")
        name = f"{parent}/repositories/{repository_id}"
        if name in self.repositories:
            raise ApiError(409, f"the repository already exists: {name}")
        body = request.body or {}
        if body.get("format") not in (1, "DOCKER"):
            raise ApiError(400, "the stand-in creates DOCKER repositories only (format 1)")
        repository = {**body, "name": name, "format": 1, "createTime": "2026-01-01T00:00:00Z"}
        self.repositories[name] = repository
        return self.standin.operations.pending(parent, self.TYPE, repository, polls=1)


class Iam:
    """projects.serviceAccounts.get / create, over IAM's REST API."""

    def __init__(self, standin: StandIn) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}
        standin.route("GET", "/v1/projects/{project}/serviceAccounts/{email}")(self.get)
        standin.route("POST", "/v1/projects/{project}/serviceAccounts")(self.create)

    def get(self, request: Request) -> dict[str, Any]:
        email = request.params["email"]
        if email not in self.accounts:
            raise ApiError(404, f"Unknown service account {email}")
        return self.accounts[email]

    def create(self, request: Request) -> dict[str, Any]:
        project = request.params["project"]
        body = request.body or {}
        account_id = body.get("accountId", "")
        if not 6 <= len(account_id) <= 30:
            raise ApiError(400, "accountId must be 6-30 characters")
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        if email in self.accounts:
            raise ApiError(
                409, f"Service account {account_id} already exists within project projects/{project}."
            )
        account = {
            "name": f"projects/{project}/serviceAccounts/{email}",
            "projectId": project,
            "uniqueId": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
            "email": email,
            **(body.get("serviceAccount") or {}),
        }
        self.accounts[email] = account
        return account


class Policies:
    """IAM policies with etags: read-modify-write, a stale etag is refused (409 ABORTED)."""

    def __init__(self) -> None:
        self.policies: dict[str, dict[str, Any]] = {}

    def get(self, resource: str) -> dict[str, Any]:
        policy = self.policies.get(resource) or {"version": 1, "bindings": []}
        return {**policy, "etag": self._etag(policy)}

    def set(self, resource: str, policy: dict[str, Any]) -> dict[str, Any]:
        current = self.get(resource)
        if policy.get("etag") and policy["etag"] != current["etag"]:
            raise ApiError(409, "There were concurrent policy changes. Please retry.", "ABORTED")
        stored = {k: v for k, v in policy.items() if k != "etag"}
        stored.setdefault("version", 1)
        self.policies[resource] = stored
        return self.get(resource)

    @staticmethod
    def _etag(policy: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).digest()[:8]
        return base64.b64encode(digest).decode()

    def members(self, resource: str, role: str) -> list[str]:
        for binding in self.get(resource)["bindings"]:
            if binding["role"] == role:
                return list(binding.get("members", []))
        return []


class ResourceManager:
    """projects.getIamPolicy / setIamPolicy (v3)."""

    def __init__(self, standin: StandIn) -> None:
        self.policies = Policies()
        standin.route("POST", "/v3/projects/{project}:getIamPolicy")(self.get_policy)
        standin.route("POST", "/v3/projects/{project}:setIamPolicy")(self.set_policy)

    def get_policy(self, request: Request) -> dict[str, Any]:
        return self.policies.get(f"projects/{request.params['project']}")

    def set_policy(self, request: Request) -> dict[str, Any]:
        policy = (request.body or {}).get("policy")
        if policy is None:
            raise ApiError(400, "policy is required")
        return self.policies.set(f"projects/{request.params['project']}", policy)


class SecretManager:
    """secrets.get / create / addVersion / versions.access / getIamPolicy / setIamPolicy."""

    def __init__(self, standin: StandIn) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[bytes]] = {}
        self.policies = Policies()
        base = "/v1/projects/{project}/secrets"
        standin.route("GET", base + "/{secret}")(self.get)
        standin.route("POST", base)(self.create)
        standin.route("POST", base + "/{secret}:addVersion")(self.add_version)
        standin.route("GET", base + "/{secret}/versions/{version}:access")(self.access)
        standin.route("GET", base + "/{secret}/versions/{version}")(self.version)
        standin.route("GET", base + "/{secret}:getIamPolicy")(self.get_policy)
        standin.route("POST", base + "/{secret}:setIamPolicy")(self.set_policy)

    @staticmethod
    def _name(request: Request) -> str:
        return f"projects/{request.params['project']}/secrets/{request.params['secret']}"

    def _secret(self, request: Request) -> str:
        name = self._name(request)
        if name not in self.secrets:
            raise ApiError(404, f"Secret [{name}] not found or has no versions.")
        return name

    def get(self, request: Request) -> dict[str, Any]:
        return self.secrets[self._secret(request)]

    def create(self, request: Request) -> dict[str, Any]:
        secret_id = request.query.get("secretId", "")
        name = f"projects/{request.params['project']}/secrets/{secret_id}"
        if not secret_id:
            raise ApiError(400, "secret_id is required")
        if name in self.secrets:
            raise ApiError(409, f"Secret [{name}] already exists.")
        if not (request.body or {}).get("replication"):
            raise ApiError(400, "Secret.replication is required.")
        self.secrets[name] = {**(request.body or {}), "name": name, "createTime": "2026-01-01T00:00:00Z"}
        self.versions[name] = []
        return self.secrets[name]

    def add_version(self, request: Request) -> dict[str, Any]:
        name = self._secret(request)
        data = ((request.body or {}).get("payload") or {}).get("data")
        if data is None:
            raise ApiError(400, "payload.data is required")
        self.versions[name].append(base64.b64decode(data))
        return {"name": f"{name}/versions/{len(self.versions[name])}", "state": 1}

    def _version_index(self, request: Request) -> tuple[str, int]:
        name = self._secret(request)
        version = request.params["version"]
        count = len(self.versions[name])
        index = count if version == "latest" else int(version) if version.isdigit() else 0
        if not 1 <= index <= count:
            raise ApiError(404, f"Secret Version [{name}/versions/{version}] not found.")
        return name, index

    def version(self, request: Request) -> dict[str, Any]:
        name, index = self._version_index(request)
        return {"name": f"{name}/versions/{index}", "state": 1}

    def access(self, request: Request) -> dict[str, Any]:
        name, index = self._version_index(request)
        data = self.versions[name][index - 1]
        return {"name": f"{name}/versions/{index}", "payload": {"data": base64.b64encode(data).decode()}}

    def get_policy(self, request: Request) -> dict[str, Any]:
        return self.policies.get(self._secret(request))

    def set_policy(self, request: Request) -> dict[str, Any]:
        policy = (request.body or {}).get("policy")
        if policy is None:
            raise ApiError(400, "policy is required")
        return self.policies.set(self._secret(request), policy)

    def value(self, secret: str) -> bytes | None:
        """The latest value of `projects/P/secrets/S` (for tests), or None."""
        versions = self.versions.get(secret) or []
        return versions[-1] if versions else None
