"""Every stand-in at once, sharing one request log: a whole local Google Cloud for one test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.standin.server import RequestLog, StandIn
from tests.standin.setup_apis import ArtifactRegistry, Iam, ResourceManager, SecretManager, ServiceUsage
from tests.standin.vertex_jobs import Runner, ScriptedRunner, VertexJobs


@dataclass
class LocalCloud:
    """The stand-ins, each on its own 127.0.0.1 port, and the state doubles behind them."""

    log: RequestLog
    vertex: StandIn
    jobs: VertexJobs
    serviceusage: StandIn
    services: ServiceUsage
    artifactregistry: StandIn
    repositories: ArtifactRegistry
    iam: StandIn
    accounts: Iam
    secretmanager: StandIn
    secrets: SecretManager
    resourcemanager: StandIn
    projects: ResourceManager
    extra: dict[str, StandIn] = field(default_factory=dict)

    @classmethod
    def start(cls, runner: Runner | None = None, container_env: dict[str, str] | None = None) -> LocalCloud:
        log = RequestLog()
        vertex = StandIn("aiplatform", log, operations_prefix="/ui").start()
        stand_ins = {
            name: StandIn(name, log).start()
            for name in ("serviceusage", "artifactregistry", "iam", "secretmanager", "resourcemanager")
        }
        return cls(
            log=log,
            vertex=vertex,
            jobs=VertexJobs(vertex, runner or ScriptedRunner(), container_env),
            serviceusage=stand_ins["serviceusage"],
            services=ServiceUsage(stand_ins["serviceusage"]),
            artifactregistry=stand_ins["artifactregistry"],
            repositories=ArtifactRegistry(stand_ins["artifactregistry"]),
            iam=stand_ins["iam"],
            accounts=Iam(stand_ins["iam"]),
            secretmanager=stand_ins["secretmanager"],
            secrets=SecretManager(stand_ins["secretmanager"]),
            resourcemanager=stand_ins["resourcemanager"],
            projects=ResourceManager(stand_ins["resourcemanager"]),
        )

    @property
    def stand_ins(self) -> list[StandIn]:
        return [
            self.vertex,
            self.serviceusage,
            self.artifactregistry,
            self.iam,
            self.secretmanager,
            self.resourcemanager,
            *self.extra.values(),
        ]

    @property
    def urls(self) -> dict[str, str]:
        """Each API's base URL, by the API's short name (aiplatform, serviceusage, ...)."""
        return {s.service: s.url for s in self.stand_ins}

    def add(self, standin: StandIn) -> StandIn:
        """Start another API host on this cloud's log (e.g. Cloud Run)."""
        standin.log = self.log
        self.extra[standin.service] = standin.start()
        return standin

    def stop(self) -> None:
        self.jobs.wait_idle(timeout=30)
        for standin in self.stand_ins:
            standin.stop()

    def __enter__(self) -> LocalCloud:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
