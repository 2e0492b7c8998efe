"""Vertex AI endpoints that really serve: `deployModel` starts the model's serving container.

`POST endpoints` creates one (finished operation, with `createTime`, which the SDK needs to keep its
copy). `:deployModel` checks the model version and its dedicated resources, then answers a pending
operation while a thread starts the version's `containerSpec` the way Vertex AI does (its command,
args and env, plus `AIP_HTTP_PORT`, `AIP_HEALTH_ROUTE`, `AIP_PREDICT_ROUTE`, `AIP_STORAGE_URI`,
`AIP_DEPLOYED_MODEL_ID`, `AIP_ENDPOINT_ID`, `AIP_MODE`...) and polls its health route: healthy, the
deployed model joins the endpoint with the requested traffic split (key "0" = this model); dead or
never healthy, the operation fails and the endpoint is left as it was. `:predict` routes each request
to a deployed model in proportion to the traffic split (smooth weighted round-robin, so a 10% share
is exactly every tenth request) and forwards `{instances, parameters}` to its predict route.
`:undeployModel` stops the server; `PATCH ?updateMask=trafficSplit` moves traffic; a split must name
deployed models and sum to 100, as the service requires.

Servers are pluggable: `DockerServers` runs the image in the Docker engine (host network);
`ProcessServers` runs the container's command as a local process (same entry point, no image), for
fast tests of the deploy logic.

Stand-in-only differences: `AIP_HTTP_PORT` is a free port of this machine, not the container port
(host network: containers cannot each have 8080); `AIP_STORAGE_URI` is the model's `artifactUri`
itself, not the service's copy of it; variables in `server_env` (e.g. STORAGE_EMULATOR_HOST) are
added; one replica whatever the resources say; no autoscaling. The machine spec is checked
against Vertex's catalogue (tests/standin/vertex_catalogue.py) but the server runs on this machine.
A server that never answers its health route keeps the operation running for `health_timeout`
seconds (Vertex AI waits many minutes) before it fails.

With `storage` (the cloud's Cloud Storage front) each server runs as its deployed model's identity:
the deployment's `serviceAccount`, which needs `iam.serviceAccounts.actAs` of the caller, else
Vertex's managed prediction account, which may only read the model's artifacts. Its Cloud Storage
requests go through an `IdentityProxy` (tests/standin/gcs_identity.py) that refuses what that
identity may not do, a prediction log's writes included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.live_servers import free_port
from tests.standin.gcs_front import GcsFront
from tests.standin.gcs_identity import IdentityProxy
from tests.standin.server import ApiError, Operations, Request, StandIn, new_id
from tests.standin.vertex_catalogue import PREDICTION_MACHINES, check_machine_spec
from tests.standin.vertex_models import VertexModels, now

TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
LOG_TAIL = 20


class Server(Protocol):
    def alive(self) -> bool:
        """Whether the server process is still running."""

    def logs(self) -> str:
        """Its last log lines."""

    def stop(self) -> None:
        """Stop and remove it."""


class Servers(Protocol):
    def start(self, name: str, spec: dict[str, Any], env: dict[str, str]) -> Server:
        """Start the container of `spec` (imageUri, command, args) with `env`."""


@dataclass
class Deployed:
    """A deployed model: its resource body and the server answering for it."""

    resource: dict[str, Any]
    server: Server
    port: int
    predict_route: str
    served: int = 0


@dataclass
class Endpoint:
    resource: dict[str, Any]
    deployed: dict[str, Deployed] = field(default_factory=dict)
    # Smooth weighted round-robin state, per deployed model id.
    credit: dict[str, float] = field(default_factory=dict)


class VertexEndpoints:
    """The endpoint and online prediction part of Vertex AI, on the Vertex StandIn."""

    def __init__(
        self,
        standin: StandIn,
        models: VertexModels,
        servers: Servers,
        server_env: dict[str, str] | None = None,
        health_timeout: float = 180.0,
        storage: GcsFront | None = None,
    ) -> None:
        self.standin = standin
        self.storage = storage
        # deployed model id -> the proxy its server reaches Cloud Storage through (with `storage`)
        self.identities: dict[str, IdentityProxy] = {}
        self.models = models
        self.servers = servers
        self.server_env = dict(server_env or {})
        self.health_timeout = health_timeout
        # endpoint id -> endpoint (ids are unique across projects; the name says whose it is)
        self.endpoints: dict[str, Endpoint] = {}
        self._dm_ids: set[str] = set()
        self._lock = threading.RLock()
        self._ops: dict[str, dict[str, Any]] = {}
        self._threads: list[threading.Thread] = []
        base = "/v1/projects/{project}/locations/{location}/endpoints"
        standin.route("POST", base, "aiplatform.endpoints.create")(self.create)
        standin.route("GET", base, "aiplatform.endpoints.list")(self.list)
        standin.route("GET", base + "/{endpoint}", "aiplatform.endpoints.get")(self.get)
        standin.route("PATCH", base + "/{endpoint}", "aiplatform.endpoints.update")(self.patch)
        standin.route("DELETE", base + "/{endpoint}", "aiplatform.endpoints.delete")(self.delete)
        standin.route("POST", base + "/{endpoint}:deployModel", "aiplatform.endpoints.deploy")(self.deploy)
        standin.route("POST", base + "/{endpoint}:undeployModel", "aiplatform.endpoints.undeploy")(
            self.undeploy
        )
        standin.route("POST", base + "/{endpoint}:predict", "aiplatform.endpoints.predict")(self.predict)
        operations = "/ui/projects/{project}/locations/{location}/endpoints/{endpoint}/operations/{op}"
        standin.route("GET", operations)(self.poll)

    # --- endpoints -------------------------------------------------------------------------------
    def create(self, request: Request) -> dict[str, Any]:
        body = request.body or {}
        if not body.get("displayName"):
            raise ApiError(400, "Endpoint.display_name is required.")
        endpoint_id = request.query.get("endpointId") or new_id(self.endpoints)
        p = request.params
        name = f"projects/{p['project']}/locations/{p['location']}/endpoints/{endpoint_id}"
        with self._lock:
            if endpoint_id in self.endpoints:
                raise ApiError(409, f"Endpoint {name} already exists.", "ALREADY_EXISTS")
            resource = {
                "name": name,
                "displayName": body["displayName"],
                "labels": dict(body.get("labels") or {}),
                "createTime": now(),
                "updateTime": now(),
                "etag": "1",
                "deployedModels": [],
                "trafficSplit": {},
            }
            if body.get("predictRequestResponseLoggingConfig"):
                resource["predictRequestResponseLoggingConfig"] = body["predictRequestResponseLoggingConfig"]
            self.endpoints[endpoint_id] = Endpoint(resource)
        return self.standin.operations.finished(name, TYPE + "Endpoint", dict(resource))

    def get(self, request: Request) -> dict[str, Any]:
        return self._view(self._endpoint(request))

    def list(self, request: Request) -> dict[str, Any]:
        prefix = f"projects/{request.params['project']}/locations/{request.params['location']}/"
        wanted = request.query.get("filter", "")
        found = []
        for endpoint in self.endpoints.values():
            view = self._view(endpoint)
            if not view["name"].startswith(prefix):
                continue
            if wanted and f'display_name="{view["displayName"]}"' != wanted.replace(" ", ""):
                if wanted.startswith("display_name"):
                    continue
                raise ApiError(400, f'Unsupported filter {wanted!r} (the stand-in knows display_name="x").')
            found.append(view)
        return {"endpoints": found} if found else {}

    def patch(self, request: Request) -> dict[str, Any]:
        endpoint = self._endpoint(request)
        mask = [m for m in request.query.get("updateMask", "").split(",") if m]
        body = request.body or {}
        with self._lock:
            for path in mask:
                if path == "trafficSplit":
                    split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
                    self._check_split(endpoint, split, set(endpoint.deployed))
                    endpoint.resource["trafficSplit"] = split
                elif path in ("displayName", "description", "labels", "predictRequestResponseLoggingConfig"):
                    endpoint.resource[path] = body.get(path)
                else:
                    raise ApiError(400, f"Unsupported update mask path {path!r}.")
            endpoint.resource["updateTime"] = now()
            endpoint.resource["etag"] = str(int(endpoint.resource["etag"]) + 1)
        return self._view(endpoint)

    def delete(self, request: Request) -> dict[str, Any]:
        endpoint = self._endpoint(request)
        if endpoint.deployed:
            raise ApiError(
                400, "The endpoint has deployed models; undeploy them first.", "FAILED_PRECONDITION"
            )
        with self._lock:
            self.endpoints.pop(endpoint.resource["name"].rsplit("/", 1)[-1], None)
        return self.standin.operations.finished(
            endpoint.resource["name"], "type.googleapis.com/google.protobuf.Empty", {}
        )

    # --- deploy / undeploy -----------------------------------------------------------------------
    def deploy(self, request: Request) -> dict[str, Any]:
        endpoint = self._endpoint(request)
        body = request.body or {}
        wanted = body.get("deployedModel") or {}
        version = self.models.resolve(wanted.get("model", ""))
        if not version["name"].startswith(endpoint.resource["name"].split("/endpoints/")[0] + "/"):
            # A model of another project or region cannot be deployed here.
            raise ApiError(404, f"Model {wanted.get('model')} not found.")
        access = self.standin.access
        project = access.find(request.params["project"]) if access is not None else None
        if access is not None and project is not None:
            access.require(
                request.principal,
                "aiplatform.models.deploy",
                [f"projects/{project.project_id}"],
                f"//aiplatform.googleapis.com/{version['name']}",
                "aiplatform.googleapis.com",
            )
            if wanted.get("serviceAccount"):
                access.act_as(
                    request.principal, project, wanted["serviceAccount"], "aiplatform.googleapis.com"
                )
        resources = wanted.get("dedicatedResources") or {}
        if DEDICATED not in version.get("supportedDeploymentResourcesTypes", []):
            raise ApiError(400, "The model does not support dedicated resources.")
        if not (resources.get("machineSpec") or {}).get("machineType"):
            raise ApiError(
                400,
                "Model requires dedicated resources: DeployedModel.dedicated_resources.machine_spec "
                "is required.",
            )
        check_machine_spec(
            resources["machineSpec"], "deployed_model.dedicated_resources.machine_spec", PREDICTION_MACHINES
        )
        split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
        if not split:
            split = {"0": 100} if not endpoint.deployed else dict(endpoint.resource["trafficSplit"])
        self._check_split(endpoint, split, {*endpoint.deployed, "0"})
        with self._lock:
            dm_id = new_id(self._dm_ids)
            self._dm_ids.add(dm_id)
        deployed = {
            "id": dm_id,
            "model": f"{version['name']}@{version['versionId']}",
            "modelVersionId": version["versionId"],
            "displayName": wanted.get("displayName") or version["displayName"],
            "dedicatedResources": resources,
            "createTime": now(),
            **({"serviceAccount": wanted["serviceAccount"]} if wanted.get("serviceAccount") else {}),
        }
        op_name = f"{endpoint.resource['name']}/operations/{uuid.uuid4().int % 10**18}"
        with self._lock:
            self._ops[op_name] = {"name": op_name, "done": False}
        thread = threading.Thread(
            target=self._start_server, args=(endpoint, deployed, version, split, op_name), daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return {"name": op_name, "done": False}

    def _start_server(
        self,
        endpoint: Endpoint,
        deployed: dict[str, Any],
        version: dict[str, Any],
        split: dict[str, int],
        op_name: str,
    ) -> None:
        spec = version["containerSpec"]
        port = free_port()
        health = spec.get("healthRoute") or "/health"
        predict = spec.get("predictRoute") or "/predict"
        endpoint_id = endpoint.resource["name"].rsplit("/", 1)[-1]
        env = {e["name"]: e.get("value", "") for e in spec.get("env", [])}
        env.update(
            AIP_HTTP_PORT=str(port),
            AIP_HEALTH_ROUTE=health,
            AIP_PREDICT_ROUTE=predict,
            AIP_STORAGE_URI=version.get("artifactUri", ""),
            AIP_DEPLOYED_MODEL_ID=deployed["id"],
            AIP_ENDPOINT_ID=endpoint_id,
            AIP_MODE="PREDICTION",
            AIP_MODE_VERSION="1.0.0",
            AIP_MACHINE_TYPE=deployed["dedicatedResources"]["machineSpec"]["machineType"],
            **self.server_env,
        )
        if self.storage is not None:
            number = endpoint.resource["name"].split("/")[1]
            proxy = IdentityProxy(
                self.storage,
                self.storage.emulator,
                deployed.get("serviceAccount"),
                version.get("artifactUri", ""),
                # The Vertex-managed account a serving container runs as by default; it lives in a
                # tenant project of Google's, named after the consumer project here.
                f"custom-online-prediction@p{number}-tp.iam.gserviceaccount.com",
            ).start()
            self.identities[deployed["id"]] = proxy
            env["STORAGE_EMULATOR_HOST"] = proxy.url
        server: Server | None = None
        try:
            server = self.servers.start(f"edge-standin-dm-{deployed['id']}", spec, env)
            error = _wait_healthy(server, port, health, self.health_timeout)
        except Exception as exc:  # the image cannot be started at all
            error = f"The model server could not be started: {exc}"
        if error:
            if server is not None:
                server.stop()
            self._finish(op_name, Operations.failed("FAILED_PRECONDITION", error, op_name))
            return
        assert server is not None
        with self._lock:
            endpoint.deployed[deployed["id"]] = Deployed(deployed, server, port, predict)
            endpoint.resource["deployedModels"].append(deployed)
            endpoint.resource["trafficSplit"] = {
                (deployed["id"] if k == "0" else k): v for k, v in split.items() if v or k == "0"
            }
            endpoint.credit = {}
            endpoint.resource["updateTime"] = now()
        answer = Operations.done(TYPE + "DeployModelResponse", {"deployedModel": deployed}, op_name)
        self._finish(op_name, answer)

    def undeploy(self, request: Request) -> dict[str, Any]:
        endpoint = self._endpoint(request)
        body = request.body or {}
        dm_id = str(body.get("deployedModelId", ""))
        with self._lock:
            if dm_id not in endpoint.deployed:
                raise ApiError(404, f"Deployed model {dm_id} not found on {endpoint.resource['name']}.")
            remaining = set(endpoint.deployed) - {dm_id}
            if "trafficSplit" in body:
                split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
            else:
                split = {k: v for k, v in endpoint.resource["trafficSplit"].items() if k != dm_id}
            if remaining:
                self._check_split(endpoint, split, remaining)
            else:
                split = {}
            gone = endpoint.deployed.pop(dm_id)
            endpoint.resource["deployedModels"] = [
                d for d in endpoint.resource["deployedModels"] if d["id"] != dm_id
            ]
            endpoint.resource["trafficSplit"] = split
            endpoint.credit = {}
        gone.server.stop()
        return self.standin.operations.finished(endpoint.resource["name"], TYPE + "UndeployModelResponse", {})

    def poll(self, request: Request) -> dict[str, Any]:
        p = request.params
        name = (
            f"projects/{p['project']}/locations/{p['location']}/endpoints/{p['endpoint']}"
            f"/operations/{p['op']}"
        )
        with self._lock:
            if name not in self._ops:
                raise ApiError(404, f"Operation {name} not found.")
            return dict(self._ops[name])

    def _finish(self, op_name: str, op: dict[str, Any]) -> None:
        with self._lock:
            self._ops[op_name] = op

    # --- prediction ------------------------------------------------------------------------------
    def predict(self, request: Request) -> dict[str, Any]:
        endpoint = self._endpoint(request)
        body = request.body or {}
        if not isinstance(body.get("instances"), list) or not body["instances"]:
            raise ApiError(400, "instances must be a non-empty list.")
        with self._lock:
            chosen = self._pick(endpoint)
            chosen.served += 1
        payload = json.dumps({k: body[k] for k in ("instances", "parameters") if k in body}).encode()
        http = urllib.request.Request(
            f"http://127.0.0.1:{chosen.port}{chosen.predict_route}",
            data=payload,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(http, timeout=60) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            status = exc.code if exc.code < 500 else 500
            raise ApiError(status, f"The model server answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(503, f"The model server is unreachable: {exc}") from None
        resource = chosen.resource
        version = self.models.resolve(resource["model"])
        return {
            "predictions": answer.get("predictions", []),
            "deployedModelId": resource["id"],
            "model": version["name"],
            "modelVersionId": resource["modelVersionId"],
            "modelDisplayName": version["displayName"],
        }

    def _pick(self, endpoint: Endpoint) -> Deployed:
        split = {
            k: v for k, v in endpoint.resource["trafficSplit"].items() if v > 0 and k in endpoint.deployed
        }
        if not split:
            raise ApiError(
                400,
                f"Endpoint {endpoint.resource['name']} has no deployed model taking traffic.",
                "FAILED_PRECONDITION",
            )
        for dm_id, weight in split.items():
            endpoint.credit[dm_id] = endpoint.credit.get(dm_id, 0.0) + weight
        best = max(split, key=lambda k: endpoint.credit[k])
        endpoint.credit[best] -= sum(split.values())
        return endpoint.deployed[best]

    # --- helpers ---------------------------------------------------------------------------------
    def _endpoint(self, request: Request) -> Endpoint:
        endpoint = self.endpoints.get(request.params["endpoint"])
        p = request.params
        where = f"projects/{p['project']}/locations/{p['location']}/"
        if endpoint is None or not endpoint.resource["name"].startswith(where):
            raise ApiError(404, f"Endpoint {request.path.removeprefix('/v1/').split(':')[0]} not found.")
        return endpoint

    def _view(self, endpoint: Endpoint) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(endpoint.resource))  # type: ignore[no-any-return]

    @staticmethod
    def _check_split(endpoint: Endpoint, split: dict[str, int], allowed: set[str]) -> None:
        unknown = set(split) - allowed
        if unknown:
            raise ApiError(400, f"Traffic split names models that are not deployed: {sorted(unknown)}.")
        if any(v < 0 for v in split.values()) or sum(split.values()) != 100:
            raise ApiError(400, f"The traffic split must add up to 100, got {split}.")

    def stop(self) -> None:
        """Stop every server (a test's cleanup)."""
        for thread in self._threads:
            thread.join(timeout=self.health_timeout + 10)
        with self._lock:
            for endpoint in self.endpoints.values():
                for deployed in endpoint.deployed.values():
                    deployed.server.stop()
                endpoint.deployed.clear()
            for proxy in self.identities.values():
                proxy.stop()

    def servers_running(self) -> int:
        return sum(1 for e in self.endpoints.values() for d in e.deployed.values() if d.server.alive())


DEDICATED = 1


def _wait_healthy(server: Server, port: int, route: str, timeout: float) -> str | None:
    """None once the health route answers 200; else why it never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            return (
                "Model server exited unexpectedly before it became healthy. Last log lines "
                f"(stand-in only):\n{server.logs()}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=2) as response:
                if response.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    return (
        "Model server never became ready. Please validate that your model file or container "
        f"configuration are valid. (stand-in: no answer on {route} within {timeout:g} s)"
    )


class DockerServers:
    """Runs the serving container in the Docker engine, host network, removed when stopped."""

    def __init__(self, client: Any | None = None) -> None:
        import docker

        self.client = client or docker.from_env()
        self.started: list[str] = []

    def start(self, name: str, spec: dict[str, Any], env: dict[str, str]) -> Server:
        container = self.client.containers.run(
            spec["imageUri"],
            command=list(spec.get("args") or []) or None,
            entrypoint=list(spec.get("command") or []) or None,
            environment=env,
            network_mode="host",
            name=f"{name}-{uuid.uuid4().hex[:6]}",
            detach=True,
        )
        self.started.append(container.name)
        return _DockerServer(container)


class _DockerServer:
    def __init__(self, container: Any) -> None:
        self.container = container
        self._logs = ""

    def alive(self) -> bool:
        try:
            self.container.reload()
        except Exception:
            return False
        return self.container.status in ("created", "running")

    def logs(self) -> str:
        with contextlib.suppress(Exception):
            self._logs = self.container.logs(tail=LOG_TAIL).decode("utf-8", "replace").strip()
        return self._logs

    def stop(self) -> None:
        self.logs()
        with contextlib.suppress(Exception):
            self.container.remove(force=True)


class ProcessServers:
    """Runs the container's command as a local process: the same entry point, without an image."""

    def __init__(self, bin_dir: str | None = None) -> None:
        self.bin_dir = bin_dir

    def start(self, name: str, spec: dict[str, Any], env: dict[str, str]) -> Server:
        argv = [*(spec.get("command") or []), *(spec.get("args") or [])]
        if not argv:
            raise RuntimeError("the container spec has no command: a process cannot run an entrypoint")
        found = shutil.which(argv[0], path=self.bin_dir) if self.bin_dir else shutil.which(argv[0])
        if found is None:
            raise RuntimeError(f"{argv[0]!r} not found")
        process = subprocess.Popen(
            [found, *argv[1:]],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return _ProcessServer(process)


class _ProcessServer:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line.decode("utf-8", "replace").rstrip())
            del self._lines[:-LOG_TAIL]

    def alive(self) -> bool:
        return self.process.poll() is None

    def logs(self) -> str:
        return "\n".join(self._lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            import signal

            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
