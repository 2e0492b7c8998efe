"""Every stand-in at once, sharing one request log and one `Access`: a whole local Google Cloud.

It knows one project (the one named at start, with its number), owned by `owner` (who created it,
as `gcloud projects create` leaves it: roles/owner and nothing else); every API is disabled until
enabled through Service Usage, unless `enabled` names it. Calls carry a bearer token this cloud
issued: `credentials_file(principal)` writes application-default credentials holding one, the file
`GOOGLE_APPLICATION_CREDENTIALS` points the real google-auth at.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.standin.access import Access, Project
from tests.standin.roles import OWNER
from tests.standin.server import RequestLog, StandIn
from tests.standin.setup_apis import ArtifactRegistry, Iam, ResourceManager, SecretManager, ServiceUsage
from tests.standin.vertex_jobs import Runner, ScriptedRunner, VertexJobs


@dataclass
class LocalCloud:
    """The stand-ins, each on its own 127.0.0.1 port, and the state doubles behind them."""

    log: RequestLog
    access: Access
    project: Project
    owner: str
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
    folder: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="edge-standin-"))
    )  # removed at stop

    @classmethod
    def start(
        cls,
        runner: Runner | None = None,
        container_env: dict[str, str] | None = None,
        project: str = "edge-test-project",
        number: str | None = None,
        owner: str = "user:developer@example.com",
        enabled: tuple[str, ...] = (),
        enable_delay: float = 0.0,
        account_propagation: float = 0.0,
    ) -> LocalCloud:
        log = RequestLog()
        access = Access(enable_delay=enable_delay, account_propagation=account_propagation)
        known = access.add_project(project, number, enabled)
        access.policies.bind(f"projects/{project}", OWNER, owner)
        vertex = StandIn(
            "aiplatform", log, operations_prefix="/ui", access=access, names_by_number=True
        ).start()
        stand_ins = {
            name: StandIn(name, log, access=access).start()
            for name in ("serviceusage", "artifactregistry", "iam", "secretmanager", "resourcemanager")
        }
        folder = Path(tempfile.mkdtemp(prefix="edge-standin-"))
        access.folder = folder / "identities"
        return cls(
            folder=folder,
            log=log,
            access=access,
            project=known,
            owner=owner,
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
        """Start another API host on this cloud's log and access rules (e.g. Cloud Run)."""
        standin.log = self.log
        standin.access = self.access
        self.extra[standin.service] = standin.start()
        return standin

    def credentials_file(self, principal: str | None = None) -> Path:
        """Application-default credentials of `principal` (default: the project's owner)."""
        return self.access.credentials_file(principal or self.owner, self.folder / "credentials")

    def credentials(self, principal: str | None = None) -> Any:
        """google-auth credentials holding a token of `principal` (default: the project's owner)."""
        from google.oauth2.credentials import Credentials

        return Credentials(token=self.access.issue_token(principal or self.owner))

    def grant(self, role: str, member: str, resource: str | None = None) -> None:
        """Bind `role` to `member` on `resource` (default: the project), as a finished setup has."""
        self.access.policies.bind(resource or f"projects/{self.project.project_id}", role, member)

    def enable(self, *apis: str) -> None:
        """Enable APIs at once (a project where they were enabled long ago)."""
        for api in apis:
            self.project.enabled[api] = 0.0

    def stop(self) -> None:
        self.jobs.wait_idle(timeout=30)
        for standin in self.stand_ins:
            standin.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalCloud:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
