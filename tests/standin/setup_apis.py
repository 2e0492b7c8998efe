"""Recording doubles of the APIs `edge setup` calls: Service Usage, Artifact Registry, IAM, Secret
Manager and Resource Manager (project IAM policy). Each keeps the state its real service keeps,
answers 404/409 as it does, and logs every request on its StandIn.

Routes follow the official clients' REST bindings (google-cloud-* `transports/rest_base.py`).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from tests.standin.access import ALWAYS_ON, API_TITLES, Policies, Project
from tests.standin.server import ApiError, Request, StandIn

SERVICE_STATE = {"DISABLED": 1, "ENABLED": 2}


class ServiceUsage:
    """services.list / get / enable / batchEnable, on the projects' API state kept by `Access`.

    An enabled API is listed as ENABLED at once, but answers only after the cloud's `enable_delay`
    (Google: "If you enabled this API recently, wait a few minutes for the action to propagate").
    batchEnable is an operation polled once, as the real one is.
    """

    TYPE = "type.googleapis.com/google.api.serviceusage.v1.BatchEnableServicesResponse"

    def __init__(self, standin: StandIn) -> None:
        assert standin.access is not None, "Service Usage keeps its state in the cloud's Access"
        self.access = standin.access
        base = "/v1/projects/{project}/services"
        standin.route("GET", base, "serviceusage.services.list")(self.list)
        standin.route("GET", base + "/{service}", "serviceusage.services.get")(self.get)
        standin.route("POST", base + ":batchEnable", "serviceusage.services.enable")(self.batch_enable)
        standin.route("POST", base + "/{service}:enable", "serviceusage.services.enable")(self.enable)
        self.standin = standin

    def _project(self, request: Request) -> Project:
        project = self.access.find(request.params["project"])
        assert project is not None  # the guard let the request through
        return project

    def _service(self, project: Project, service: str) -> dict[str, Any]:
        state = "ENABLED" if service in project.enabled or service in ALWAYS_ON else "DISABLED"
        return {
            "name": f"projects/{project.number}/services/{service}",
            "parent": f"projects/{project.number}",
            "config": {"name": service, "title": API_TITLES.get(service, service)},
            "state": SERVICE_STATE[state],
        }

    def list(self, request: Request) -> dict[str, Any]:
        project = self._project(request)
        wanted = request.query.get("filter", "")
        if wanted and wanted != "state:ENABLED":
            raise ApiError(400, f"Invalid filter {wanted!r}; the stand-in knows state:ENABLED only.")
        names = sorted(set(project.enabled) | ALWAYS_ON)
        return {"services": [self._service(project, s) for s in names]}

    def get(self, request: Request) -> dict[str, Any]:
        return self._service(self._project(request), request.params["service"])

    def batch_enable(self, request: Request) -> dict[str, Any]:
        project = self._project(request)
        ids = (request.body or {}).get("serviceIds") or []
        if not ids or len(ids) > 20:
            raise ApiError(400, "serviceIds must name 1 to 20 services.")
        self._known(ids)
        self.access.enable(project, ids)
        services = [self._service(project, s) for s in ids]
        return self.standin.operations.pending("", self.TYPE, {"services": services}, polls=1)

    def enable(self, request: Request) -> dict[str, Any]:
        project, service = self._project(request), request.params["service"]
        self._known([service])
        self.access.enable(project, [service])
        return self.standin.operations.finished(
            "",
            "type.googleapis.com/google.api.serviceusage.v1.EnableServiceResponse",
            {"service": self._service(project, service)},
        )

    @staticmethod
    def _known(ids: list[str]) -> None:
        unknown = [s for s in ids if not s.endswith(".googleapis.com")]
        if unknown:
            raise ApiError(403, f"Service {unknown[0]} not found or permission denied.", "PERMISSION_DENIED")


class ArtifactRegistry:
    """repositories.get / create (an operation polled once, like the real one)."""

    TYPE = "type.googleapis.com/google.devtools.artifactregistry.v1.Repository"

    def __init__(self, standin: StandIn) -> None:
        self.repositories: dict[str, dict[str, Any]] = {}
        base = "/v1/projects/{project}/locations/{location}/repositories"
        standin.route("GET", base + "/{repository}", "artifactregistry.repositories.get", self._name)(
            self.get
        )
        standin.route("POST", base, "artifactregistry.repositories.create")(self.create)
        self.standin = standin

    @staticmethod
    def _name(request: Request) -> str:
        p = request.params
        return f"projects/{p['project']}/locations/{p['location']}/repositories/{p['repository']}"

    def get(self, request: Request) -> dict[str, Any]:
        name = self._name(request)
        if name not in self.repositories:
            raise ApiError(404, f"Requested entity was not found. ({name})")
        return self.repositories[name]

    def create(self, request: Request) -> dict[str, Any]:
        parent = f"projects/{request.params['project']}/locations/{request.params['location']}"
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
    """projects.serviceAccounts.get / create / getIamPolicy / setIamPolicy, over IAM's REST API.

    A new account exists at once for `get`, but a policy binding it is refused for the cloud's
    `account_propagation` seconds (tests/standin/access.py).
    """

    def __init__(self, standin: StandIn) -> None:
        assert standin.access is not None
        self.access = standin.access
        self.accounts: dict[str, dict[str, Any]] = {}
        base = "/v1/projects/{project}/serviceAccounts"
        name = self._name
        standin.route("GET", base + "/{email}", "iam.serviceAccounts.get", name)(self.get)
        standin.route("POST", base, "iam.serviceAccounts.create")(self.create)
        standin.route("POST", base + "/{email}:getIamPolicy", "iam.serviceAccounts.getIamPolicy", name)(
            self.get_policy
        )
        standin.route("POST", base + "/{email}:setIamPolicy", "iam.serviceAccounts.setIamPolicy", name)(
            self.set_policy
        )

    @staticmethod
    def _name(request: Request) -> str:
        return f"projects/{request.params['project']}/serviceAccounts/{request.params['email']}"

    def _account(self, request: Request) -> dict[str, Any]:
        email = request.params["email"]
        account = self.accounts.get(email)
        if account is None or account["projectId"] != request.params["project"]:
            raise ApiError(404, f"Unknown service account {email}")
        return account

    def get(self, request: Request) -> dict[str, Any]:
        return self._account(request)

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
        self.add(project, account_id, **(body.get("serviceAccount") or {}))
        return self.accounts[email]

    def add(self, project: str, account_id: str, **fields: Any) -> str:
        """Create an account directly (what a test sets up as already there); its email."""
        email = f"{account_id}@{project}.iam.gserviceaccount.com"
        self.accounts[email] = {
            "name": f"projects/{project}/serviceAccounts/{email}",
            "projectId": project,
            "uniqueId": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
            "email": email,
            **fields,
        }
        self.access.account_created(email)
        return email

    def get_policy(self, request: Request) -> dict[str, Any]:
        self._account(request)
        return self.access.policies.get(self._name(request))

    def set_policy(self, request: Request) -> dict[str, Any]:
        self._account(request)
        policy = (request.body or {}).get("policy")
        if policy is None:
            raise ApiError(400, "policy is required")
        return self.access.policies.set(self._name(request), policy)


class ResourceManager:
    """projects.get / getIamPolicy / setIamPolicy (v3): the policies every other call is judged by."""

    def __init__(self, standin: StandIn) -> None:
        assert standin.access is not None
        self.access = standin.access
        self.policies: Policies = standin.access.policies
        base = "/v3/projects/{project}"
        standin.route("GET", base, "resourcemanager.projects.get")(self.get)
        standin.route("POST", base + ":getIamPolicy", "resourcemanager.projects.getIamPolicy")(
            self.get_policy
        )
        standin.route("POST", base + ":setIamPolicy", "resourcemanager.projects.setIamPolicy")(
            self.set_policy
        )

    def get(self, request: Request) -> dict[str, Any]:
        project = self.access.find(request.params["project"])
        assert project is not None
        return {
            "name": f"projects/{project.number}",
            "projectId": project.project_id,
            "state": 1,  # ACTIVE
            "displayName": project.project_id,
        }

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
        assert standin.access is not None
        self.secrets: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[bytes]] = {}
        self.policies: Policies = standin.access.policies
        base = "/v1/projects/{project}/secrets"
        name = self._name
        standin.route("GET", base + "/{secret}", "secretmanager.secrets.get", name)(self.get)
        standin.route("POST", base, "secretmanager.secrets.create")(self.create)
        standin.route("POST", base + "/{secret}:addVersion", "secretmanager.versions.add", name)(
            self.add_version
        )
        standin.route(
            "GET", base + "/{secret}/versions/{version}:access", "secretmanager.versions.access", name
        )(self.access)
        standin.route("GET", base + "/{secret}/versions/{version}", "secretmanager.versions.get", name)(
            self.version
        )
        standin.route("GET", base + "/{secret}:getIamPolicy", "secretmanager.secrets.getIamPolicy", name)(
            self.get_policy
        )
        standin.route("POST", base + "/{secret}:setIamPolicy", "secretmanager.secrets.setIamPolicy", name)(
            self.set_policy
        )

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
