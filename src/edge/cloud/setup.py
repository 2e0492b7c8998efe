"""`edge setup`: read what exists in the project, plan what is missing, then create it step by step.

Plan, then apply (Terraform's habit): every step is checked before it is taken and is idempotent,
so a second run plans nothing. What it provisions, least privilege first:
- the APIs Edge uses; the bucket (the region's, uniform access, staging objects expire);
- the Artifact Registry Docker repository; the service account jobs run as, with only the roles a
  training job needs (write logs, read images; objects in this bucket; the tracking secret);
- the Secret Manager secret with the MongoDB tracking URL (the value is read from the environment or
  stdin, sent only to Secret Manager, never printed, logged or written to disk);
- the DVC remote gs://<bucket>/dvc in the committed .dvc/config (credentials never go there).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.cloud.clients import Clients
from edge.cloud.errors import CloudError, explain
from edge.cloud.settings import Settings

APIS = (
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "storage.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
)
# Project-wide roles of the job service account: a training job writes logs and pulls the image.
PROJECT_ROLES = ("roles/logging.logWriter", "roles/artifactregistry.reader")
BUCKET_ROLE = "roles/storage.objectAdmin"  # on the bucket only
SECRET_ROLE = "roles/secretmanager.secretAccessor"  # on the tracking secret only
STAGING_PREFIX = "staging/"
STAGING_DAYS = 7
DVC_REMOTE = "gcs"


@dataclass
class Step:
    """One resource: what was found, and what applying would do (nothing when `action` is None)."""

    resource: str
    found: str
    action: str | None = None
    run: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def changes(self) -> bool:
        return self.action is not None


@dataclass
class Plan:
    steps: list[Step]

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.changes]


class Setup:
    """Plans and applies the provisioning of one project, through the clients in `clients`."""

    def __init__(
        self,
        settings: Settings,
        clients: Clients | None = None,
        tracking_url: str | None = None,
        repo: Path = Path(),
    ) -> None:
        self.settings = settings
        self.clients = clients or Clients(settings)
        self._tracking_url = tracking_url
        self.repo = repo
        self._member = f"serviceAccount:{settings.service_account_email}"

    # --- plan -------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """Read each resource and decide what to do; changes nothing."""
        steps = [self._apis()]
        bucket = self._bucket()
        steps.append(bucket)
        steps.append(self._repository())
        account = self._account()
        steps.append(account)
        steps.append(self._project_roles())
        steps.append(self._bucket_role(new=bucket.changes or account.changes))
        secret_steps = self._secret(new_account=account.changes)
        steps.extend(secret_steps)
        steps.append(self._dvc_remote())
        return Plan(steps)

    def apply(self, plan: Plan, progress: Callable[[Step], None] = lambda step: None) -> None:
        """Take each planned action in order; the first failure stops with a message saying which."""
        for step in plan.changes:
            progress(step)
            assert step.run is not None
            try:
                step.run()
            except CloudError:
                raise
            except Exception as exc:
                raise self._explained(exc, f"{step.action} ({step.resource})") from None

    @staticmethod
    def _explained(exc: Exception, doing: str) -> Exception:
        from google.api_core import exceptions

        if isinstance(exc, exceptions.GoogleAPICallError):
            return explain(exc, doing)
        return exc

    def _read(self, doing: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            raise self._explained(exc, doing) from None

    # --- APIs -------------------------------------------------------------------------------------
    def _apis(self) -> Step:
        client = self.clients.service_usage()
        parent = f"projects/{self.settings.project}"

        def enabled() -> set[str]:
            pages = client.list_services(request={"parent": parent, "filter": "state:ENABLED"})
            return {service.config.name for service in pages}

        missing = [api for api in APIS if api not in self._read("listing the enabled APIs", enabled)]
        if not missing:
            return Step("APIs", f"{len(APIS)} enabled")

        def enable() -> None:
            operation = client.batch_enable_services(request={"parent": parent, "service_ids": missing})
            operation.result(timeout=300)

        return Step("APIs", f"{len(missing)} disabled", f"enable {', '.join(missing)}", enable)

    # --- bucket -----------------------------------------------------------------------------------
    def _bucket(self) -> Step:
        client = self.clients.storage()
        name, region = self.settings.bucket, self.settings.region
        from google.api_core import exceptions

        try:
            bucket = client.lookup_bucket(name)
        except exceptions.Forbidden:
            # Bucket names are global: a 403 here is, most often, a bucket of another project.
            raise CloudError(
                f"bucket {name} exists but you cannot read it (another project's, or you lack "
                "storage.buckets.get): choose another name with `edge config --bucket`"
            ) from None
        except Exception as exc:
            raise self._explained(exc, f"reading bucket {name}") from None
        if bucket is None:

            def create() -> None:
                from google.api_core import exceptions

                new = client.bucket(name)
                new.iam_configuration.uniform_bucket_level_access_enabled = True
                new.add_lifecycle_delete_rule(age=STAGING_DAYS, matches_prefix=[STAGING_PREFIX])
                try:
                    client.create_bucket(new, location=region)
                except exceptions.Conflict:
                    raise CloudError(
                        f"bucket {name} already exists in another project: bucket names are global; "
                        "choose another with `edge config --bucket`"
                    ) from None

            return Step(f"bucket gs://{name}", "missing", f"create in {region}, uniform access", create)
        location = (bucket.location or "").lower()
        if location != region:
            raise CloudError(
                f"bucket {name} is in {bucket.location}, not {region}: Vertex AI needs its job outputs in "
                f"the job's region; choose another bucket (`edge config --bucket`) or region (`--region`)"
            )
        fixes = []
        if not bucket.iam_configuration.uniform_bucket_level_access_enabled:
            fixes.append("uniform access")
        if not any(
            rule.get("action", {}).get("type") == "Delete"
            and STAGING_PREFIX in (rule.get("condition", {}).get("matchesPrefix") or [])
            for rule in bucket.lifecycle_rules
        ):
            fixes.append(f"expire {STAGING_PREFIX} after {STAGING_DAYS} days")
        if not fixes:
            return Step(f"bucket gs://{name}", f"exists in {region}")

        def update() -> None:
            bucket.iam_configuration.uniform_bucket_level_access_enabled = True
            if f"expire {STAGING_PREFIX} after {STAGING_DAYS} days" in fixes:
                bucket.add_lifecycle_delete_rule(age=STAGING_DAYS, matches_prefix=[STAGING_PREFIX])
            bucket.patch()

        return Step(f"bucket gs://{name}", f"exists in {region}", f"set {', '.join(fixes)}", update)

    # --- Artifact Registry ------------------------------------------------------------------------
    def _repository(self) -> Step:
        from google.api_core import exceptions

        client = self.clients.artifact_registry()
        parent = f"projects/{self.settings.project}/locations/{self.settings.region}"
        name = f"{parent}/repositories/{self.settings.repository}"
        label = f"Docker repository {self.settings.repository}"
        repository = self._read(label, lambda: _or_none(lambda: client.get_repository(name=name)))
        if repository is not None:
            if int(repository.format_) != 1:  # DOCKER
                raise CloudError(f"{name} exists but is not a Docker repository: set another `--repository`")
            return Step(label, "exists")

        def create() -> None:
            # Conflict: created meanwhile by someone else; the goal is reached.
            with contextlib.suppress(exceptions.Conflict):
                client.create_repository(
                    request={
                        "parent": parent,
                        "repository_id": self.settings.repository,
                        "repository": {"format_": 1, "description": "Edge images (trainer, webapp)"},
                    }
                ).result(timeout=300)

        return Step(label, "missing", f"create in {self.settings.region}", create)

    # --- service account and its roles ----------------------------------------------------------------
    def _account(self) -> Step:
        iam = self.clients.iam()
        email = self.settings.service_account_email
        label = f"service account {email}"
        found = self._read(label, lambda: iam.get_service_account(self.settings.project, email))
        if found:
            return Step(label, "exists")

        def create() -> None:
            from google.api_core import exceptions

            with contextlib.suppress(exceptions.Conflict):
                iam.create_service_account(self.settings.project, self.settings.service_account, "Edge jobs")

        return Step(label, "missing", "create", create)

    def _project_roles(self) -> Step:
        client = self.clients.projects()
        resource = f"projects/{self.settings.project}"
        label = f"project roles of {self.settings.service_account}"
        policy = self._read(
            "reading the project's IAM policy",
            lambda: client.get_iam_policy(
                request={"resource": resource, "options": {"requested_policy_version": 3}}
            ),
        )
        missing = [r for r in PROJECT_ROLES if not _has(policy, r, self._member)]
        if not missing:
            return Step(label, ", ".join(PROJECT_ROLES))

        def grant() -> None:
            fresh = client.get_iam_policy(
                request={"resource": resource, "options": {"requested_policy_version": 3}}
            )
            if _grant(fresh, missing, self._member):
                client.set_iam_policy(request={"resource": resource, "policy": fresh})

        return Step(label, "missing " + ", ".join(missing), "grant " + ", ".join(missing), grant)

    def _bucket_role(self, new: bool) -> Step:
        client = self.clients.storage()
        label = f"bucket role of {self.settings.service_account}"
        name = self.settings.bucket

        def grant() -> None:
            bucket = client.bucket(name)
            policy = bucket.get_iam_policy(requested_policy_version=3)
            policy.bindings.append({"role": BUCKET_ROLE, "members": {self._member}})
            bucket.set_iam_policy(policy)

        if not new:
            policy = self._read(
                "reading the bucket's IAM policy", lambda: client.bucket(name).get_iam_policy()
            )
            if any(
                b["role"] == BUCKET_ROLE and self._member in b.get("members", ()) for b in policy.bindings
            ):
                return Step(label, f"{BUCKET_ROLE} on gs://{name}")
        return Step(label, "missing", f"grant {BUCKET_ROLE} on gs://{name}", grant)

    # --- tracking secret --------------------------------------------------------------------------
    def _secret(self, new_account: bool) -> list[Step]:
        from google.api_core import exceptions

        client = self.clients.secret_manager()
        project = f"projects/{self.settings.project}"
        name = f"{project}/secrets/{self.settings.tracking_secret}"
        label = f"secret {self.settings.tracking_secret}"
        exists = self._read(label, lambda: _or_none(lambda: client.get_secret(name=name))) is not None
        value = self._tracking_url

        def add_version() -> None:
            assert value is not None
            client.add_secret_version(request={"parent": name, "payload": {"data": value.encode()}})

        if not exists and value is None:
            return [
                Step(
                    label, "missing; no tracking URL given (set EDGE_TRACKING_URL): runs stay in job journals"
                )
            ]
        if not exists:

            def create() -> None:
                secret = {"replication": {"automatic": {}}, "labels": {"managed-by": "edge"}}
                with contextlib.suppress(exceptions.Conflict):
                    client.create_secret(
                        request={
                            "parent": project,
                            "secret_id": self.settings.tracking_secret,
                            "secret": secret,
                        }
                    )
                add_version()

            step = Step(label, "missing", "create, holding the tracking URL given (value not shown)", create)
            return [step, self._secret_role(client, name, new=True)]
        current = self._latest(client, name)
        if value is not None and current != value:
            found = "exists, value differs" if current else "exists, no value"
            step = Step(
                label, found, "add a version with the tracking URL given (value not shown)", add_version
            )
        else:
            step = Step(label, "exists" if current else "exists, no value (set EDGE_TRACKING_URL)")
        return [step, self._secret_role(client, name, new=new_account)]

    def _latest(self, client: Any, name: str) -> str | None:
        from google.api_core import exceptions

        try:
            response = client.access_secret_version(name=f"{name}/versions/latest", retry=None)
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, f"reading {name}") from None
        return bytes(response.payload.data).decode("utf-8", "replace")

    def _secret_role(self, client: Any, name: str, new: bool) -> Step:
        label = f"secret role of {self.settings.service_account}"

        def grant() -> None:
            policy = client.get_iam_policy(request={"resource": name})
            if _grant(policy, [SECRET_ROLE], self._member):
                client.set_iam_policy(request={"resource": name, "policy": policy})

        if not new:
            policy = self._read(
                "reading the secret's IAM policy", lambda: client.get_iam_policy(request={"resource": name})
            )
            if _has(policy, SECRET_ROLE, self._member):
                return Step(label, f"{SECRET_ROLE} on the secret")
        return Step(label, "missing", f"grant {SECRET_ROLE} on the secret", grant)

    # --- DVC remote -------------------------------------------------------------------------------
    def _dvc_remote(self) -> Step:
        url = self.settings.dvc_remote_uri
        label = f"DVC remote {DVC_REMOTE}"
        if not (self.repo / ".dvc").is_dir():
            return Step(label, "not a DVC repository here: skipped")
        current = self._dvc("remote", "list", "--project").stdout
        # Lines of `name<TAB>url` (then `(default)` for the default remote).
        remotes = {line.split()[0]: line.split()[1] for line in current.splitlines() if len(line.split()) > 1}
        if remotes.get(DVC_REMOTE) == url:
            return Step(label, url)
        verb = "modify" if DVC_REMOTE in remotes else "add"

        def configure() -> None:
            if verb == "add":
                self._dvc("remote", "add", "--project", DVC_REMOTE, url)
            else:
                self._dvc("remote", "modify", "--project", DVC_REMOTE, "url", url)
            if len(remotes) == 0:
                self._dvc("remote", "default", "--project", DVC_REMOTE)

        return Step(
            label, remotes.get(DVC_REMOTE, "missing").strip(), f"{verb} {url} in .dvc/config", configure
        )

    def _dvc(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=self.repo, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise CloudError(f"dvc {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done


def _or_none(call: Callable[[], Any]) -> Any:
    """The call's result, or None when the resource does not exist (404)."""
    from google.api_core import exceptions

    try:
        return call()
    except exceptions.NotFound:
        return None


def _has(policy: Any, role: str, member: str) -> bool:
    return any(b.role == role and member in b.members for b in policy.bindings)


def _grant(policy: Any, roles: list[str] | tuple[str, ...], member: str) -> bool:
    """Add `member` to each role's binding in the policy object; whether anything changed."""
    changed = False
    for role in roles:
        binding = next((b for b in policy.bindings if b.role == role and not b.condition.expression), None)
        if binding is None:
            policy.bindings.add(role=role, members=[member])
            changed = True
        elif member not in binding.members:
            binding.members.append(member)
            changed = True
    return changed
