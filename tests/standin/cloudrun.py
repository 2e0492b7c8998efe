"""Cloud Run (v2 REST): a recording double of services and their IAM policy.

`POST services?serviceId=` creates, `PATCH services/S` updates (each a finished operation typed
`google.cloud.run.v2.Service`, with `uri` and a new `latestCreatedRevision`), `GET` reads,
`:getIamPolicy` / `:setIamPolicy` keep the policy (etag checked) in the cloud's `Access`. Creating
or updating a service that runs as a service account needs `iam.serviceAccounts.actAs` on it.
Nothing runs: the webapp container
itself is exercised elsewhere (tests/unit/test_webapp_vertex.py against the Vertex stand-in).
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.standin.server import ApiError, Request, StandIn
from tests.standin.vertex_models import now

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"


class CloudRun:
    def __init__(self, standin: StandIn) -> None:
        assert standin.access is not None
        self.standin = standin
        self.access = standin.access
        self.services: dict[str, dict[str, Any]] = {}
        self._revisions = itertools.count(1)
        base = "/v2/projects/{project}/locations/{location}/services"
        name = self._name
        standin.route("POST", base, "run.services.create")(self.create)
        standin.route("GET", base + "/{service}", "run.services.get", name)(self.get)
        standin.route("PATCH", base + "/{service}", "run.services.update", name)(self.update)
        standin.route("GET", base + "/{service}:getIamPolicy", "run.services.getIamPolicy", name)(
            self.get_policy
        )
        standin.route("POST", base + "/{service}:setIamPolicy", "run.services.setIamPolicy", name)(
            self.set_policy
        )

    @property
    def policies(self) -> dict[str, dict[str, Any]]:
        """Each service's IAM policy, by service name."""
        return {name: self.access.policies.get(name) for name in self.services}

    def create(self, request: Request) -> dict[str, Any]:
        service_id = request.query.get("serviceId")
        if not service_id:
            raise ApiError(400, "service_id is required.")
        p = request.params
        name = f"projects/{p['project']}/locations/{p['location']}/services/{service_id}"
        if name in self.services:
            raise ApiError(409, f"Resource '{service_id}' already exists.", "ALREADY_EXISTS")
        self._check(request)
        service = {
            **request.body,
            "name": name,
            "uid": f"uid-{service_id}",
            "createTime": now(),
            "uri": f"https://{service_id}-abc123-{p['location'][:2]}.a.run.app",
        }
        self.services[name] = service
        return self._revise(service)

    def get(self, request: Request) -> dict[str, Any]:
        return dict(self._service(request))

    def update(self, request: Request) -> dict[str, Any]:
        service = self._service(request)
        self._check(request)
        service.update({k: v for k, v in request.body.items() if k not in ("name", "uri", "uid")})
        return self._revise(service)

    def get_policy(self, request: Request) -> dict[str, Any]:
        self._service(request)
        return self.access.policies.get(self._name(request))

    def set_policy(self, request: Request) -> dict[str, Any]:
        self._service(request)
        policy = (request.body or {}).get("policy") or {}
        if not policy.get("etag"):
            raise ApiError(409, "There were concurrent policy changes; read the policy again.", "ABORTED")
        return self.access.policies.set(self._name(request), policy)

    def _revise(self, service: dict[str, Any]) -> dict[str, Any]:
        service["latestCreatedRevision"] = f"{service['name']}/revisions/r{next(self._revisions)}"
        service["updateTime"] = now()
        parent = service["name"].split("/services/")[0]
        return self.standin.operations.finished(parent, SERVICE_TYPE, dict(service))

    def _check(self, request: Request) -> None:
        template = (request.body or {}).get("template") or {}
        containers = template.get("containers") or []
        if not containers or not containers[0].get("image"):
            raise ApiError(400, "template.containers[0].image is required.")
        account = template.get("serviceAccount")
        if account:
            project = self.access.find(request.params["project"])
            assert project is not None
            self.access.act_as(request.principal, project, account, "run.googleapis.com")

    def _service(self, request: Request) -> dict[str, Any]:
        service = self.services.get(self._name(request))
        if service is None:
            raise ApiError(404, f"Service {request.params['service']} not found.")
        return service

    @staticmethod
    def _name(request: Request) -> str:
        p = request.params
        return f"projects/{p['project']}/locations/{p['location']}/services/{p['service']}"
