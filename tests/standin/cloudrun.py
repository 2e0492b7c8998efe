"""Cloud Run (v2 REST): a recording double of services and their IAM policy.

`POST services?serviceId=` creates, `PATCH services/S` updates (each a finished operation typed
`google.cloud.run.v2.Service`, with `uri` and a new `latestCreatedRevision`), `GET` reads,
`:getIamPolicy` / `:setIamPolicy` keep the policy (etag checked). Nothing runs: the webapp container
itself is exercised elsewhere (tests/unit/test_webapp_vertex.py against the Vertex stand-in).
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from tests.standin.server import ApiError, Operations, Request, StandIn
from tests.standin.vertex_models import now

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"


class CloudRun:
    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.services: dict[str, dict[str, Any]] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self._revisions = itertools.count(1)
        base = "/v2/projects/{project}/locations/{location}/services"
        standin.route("POST", base)(self.create)
        standin.route("GET", base + "/{service}")(self.get)
        standin.route("PATCH", base + "/{service}")(self.update)
        standin.route("GET", base + "/{service}:getIamPolicy")(self.get_policy)
        standin.route("POST", base + "/{service}:setIamPolicy")(self.set_policy)

    def create(self, request: Request) -> dict[str, Any]:
        service_id = request.query.get("serviceId")
        if not service_id:
            raise ApiError(400, "service_id is required.")
        p = request.params
        name = f"projects/{p['project']}/locations/{p['location']}/services/{service_id}"
        if name in self.services:
            raise ApiError(409, f"Resource '{service_id}' already exists.", "ALREADY_EXISTS")
        self._check(request.body)
        service = {
            **request.body,
            "name": name,
            "uid": f"uid-{service_id}",
            "createTime": now(),
            "uri": f"https://{service_id}-abc123-{p['location'][:2]}.a.run.app",
        }
        self.services[name] = service
        self.policies[name] = {"etag": base64.b64encode(b"1").decode(), "version": 1}
        return self._revise(service)

    def get(self, request: Request) -> dict[str, Any]:
        return dict(self._service(request))

    def update(self, request: Request) -> dict[str, Any]:
        service = self._service(request)
        self._check(request.body)
        service.update({k: v for k, v in request.body.items() if k not in ("name", "uri", "uid")})
        return self._revise(service)

    def get_policy(self, request: Request) -> dict[str, Any]:
        self._service(request)
        return dict(self.policies[self._name(request)])

    def set_policy(self, request: Request) -> dict[str, Any]:
        self._service(request)
        name = self._name(request)
        policy = (request.body or {}).get("policy") or {}
        if policy.get("etag") != self.policies[name]["etag"]:
            raise ApiError(409, "There were concurrent policy changes; read the policy again.", "ABORTED")
        serial = int(base64.b64decode(self.policies[name]["etag"])) + 1
        self.policies[name] = {**policy, "etag": base64.b64encode(str(serial).encode()).decode()}
        return dict(self.policies[name])

    def _revise(self, service: dict[str, Any]) -> dict[str, Any]:
        service["latestCreatedRevision"] = f"{service['name']}/revisions/r{next(self._revisions)}"
        service["updateTime"] = now()
        return Operations.done(SERVICE_TYPE, dict(service))

    @staticmethod
    def _check(body: Any) -> None:
        containers = ((body or {}).get("template") or {}).get("containers") or []
        if not containers or not containers[0].get("image"):
            raise ApiError(400, "template.containers[0].image is required.")

    def _service(self, request: Request) -> dict[str, Any]:
        service = self.services.get(self._name(request))
        if service is None:
            raise ApiError(404, f"Service {request.params['service']} not found.")
        return service

    @staticmethod
    def _name(request: Request) -> str:
        p = request.params
        return f"projects/{p['project']}/locations/{p['location']}/services/{p['service']}"
