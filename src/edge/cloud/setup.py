"""`edge setup`: read what exists in the project, plan what is missing, then create it step by step.

Plan, then apply (Terraform's habit): every step is checked before it is taken and is idempotent,
so a second run plans nothing. What it provisions, least privilege first:
- the APIs Edge uses, enabled before anything behind them is read (a disabled API answers 403
  SERVICE_DISABLED, which says nothing about the resource); the bucket (the region's, uniform
  access, staging objects expire);
- the Artifact Registry Docker repository; the service account jobs and the webapp run as, with only
  the roles they need (write logs, read images, call Vertex AI; objects in this bucket; the tracking
  secret);
- the Secret Manager secret with the MongoDB tracking URL (the value is read from the environment or
  stdin, sent only to Secret Manager, never printed, logged or written to disk);
- the DVC remote gs://<bucket>/dvc in the committed .dvc/config (credentials never go there).

Google is eventually consistent, and setup waits for it rather than failing: an API just enabled
answers SERVICE_DISABLED for a few minutes, a new service account cannot be bound for up to a
minute or more, and a policy written by someone else between our read and our write is refused
(409/412) (https://cloud.google.com/iam/docs/access-change-propagation,
https://cloud.google.com/service-usage/docs/enable-disable). Each wait prints a line.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
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
    # the webapp's deployment (Cloud Run), and keyless CI: STS exchanges CircleCI's token, IAM
    # Credentials turns it into the deployer's
    "run.googleapis.com",
    "iamcredentials.googleapis.com",
    "sts.googleapis.com",
)
# Project-wide roles of the job service account: a training job writes logs and pulls the image; the
# webapp, which runs as the same account on Cloud Run, calls the Vertex AI endpoint.
PROJECT_ROLES = ("roles/logging.logWriter", "roles/artifactregistry.reader", "roles/aiplatform.user")
BUCKET_ROLE = "roles/storage.objectAdmin"  # on the bucket only
SECRET_ROLE = "roles/secretmanager.secretAccessor"  # on the tracking secret only
STAGING_PREFIX = "staging/"
STAGING_DAYS = 7
DVC_REMOTE = "gcs"
# How long to wait for Google's eventual consistency before giving up with a message: an API just
# enabled ("wait a few minutes for the action to propagate"), a new service account (IAM: "usually
# within a minute", sometimes longer).
API_WAIT = 600.0
ACCOUNT_WAIT = 300.0
CONFLICT_RETRIES = 5


class NotAnsweringError(CloudError):
    """An API listed as enabled still answers SERVICE_DISABLED: enabling has not propagated yet."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(message)
        self.service = service


def service_disabled(exc: BaseException) -> str | None:
    """The API a 403 SERVICE_DISABLED names (google.rpc.ErrorInfo), else None."""
    if getattr(exc, "reason", None) != "SERVICE_DISABLED":
        return None
    metadata = dict(getattr(exc, "metadata", None) or {})
    return str(metadata.get("service") or "an API")


def backoff(first: float = 1.0, cap: float = 20.0) -> Callable[[], float]:
    """Successive delays, doubling from `first` up to `cap`."""
    delay = first / 2

    def next_delay() -> float:
        nonlocal delay
        delay = min(delay * 2, cap)
        return delay

    return next_delay


@dataclass
class Step:
    """One resource: what was found, and what applying would do (nothing when `action` is None)."""

    resource: str
    found: str
    action: str | None = None
    run: Callable[[], None] | None = field(default=None, repr=False)
    # Not read: its API is not enabled yet. Planned again once the API answers.
    unread: bool = False

    @property
    def changes(self) -> bool:
        return self.action is not None


@dataclass
class Plan:
    steps: list[Step]

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.changes]

    @property
    def unread(self) -> bool:
        """Whether some resource could not be read yet (its API is being enabled): plan again after."""
        return any(s.unread for s in self.steps)

    @property
    def unread_count(self) -> int:
        return sum(s.unread for s in self.steps)


class Setup:
    """Plans and applies the provisioning of one project, through the clients in `clients`."""

    def __init__(
        self,
        settings: Settings,
        clients: Clients | None = None,
        tracking_url: str | None = None,
        repo: Path = Path(),
        notify: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.settings = settings
        self.clients = clients or Clients(settings)
        self._tracking_url = tracking_url
        self.repo = repo
        self.notify = notify  # one line per wait, for the terminal and CI logs
        self._member = f"serviceAccount:{settings.service_account_email}"
        self._disabled: set[str] = set()

    # --- plan -------------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """Read each resource and decide what to do; changes nothing.

        A resource behind a disabled API is not read (its 403 would say nothing about it): its step
        is `unread`, planned again once `apply` has enabled the API. An API listed as enabled that
        still answers SERVICE_DISABLED has just been enabled: wait for it, with a line per try.
        """
        plan: Plan = self._when_answering(self._plan)
        return plan

    def _when_answering(self, call: Callable[[], Any]) -> Any:
        """`call()`, again with backoff while an API just enabled answers SERVICE_DISABLED."""
        deadline = time.monotonic() + API_WAIT
        started = time.monotonic()
        delays = backoff(2.0, 30.0)
        while True:
            try:
                return call()
            except NotAnsweringError as exc:
                delay = delays()
                if time.monotonic() + delay > deadline:
                    raise CloudError(
                        f"{exc.service} is enabled but still answers as disabled after {API_WAIT:.0f} s: "
                        "Google can take longer to propagate; run `edge setup` again in a few minutes"
                    ) from None
                self.notify(
                    f"waiting for {exc.service} to answer: enabled, not yet propagated "
                    f"({time.monotonic() - started:.0f} s so far; Google says a few minutes)"
                )
                time.sleep(delay)

    def _plan(self) -> Plan:
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
            if step.unread:
                continue  # planned again once its API answers
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
            raise self._not_answering(exc, doing) or self._explained(exc, doing) from None

    @staticmethod
    def _not_answering(exc: Exception, doing: str) -> NotAnsweringError | None:
        service = service_disabled(exc)
        if service is None:
            return None
        return NotAnsweringError(service, f"{doing} failed: {service} is enabled but does not answer yet")

    def _unread(self, label: str, api: str) -> Step | None:
        """The step for a resource behind `api` while the API is disabled, else None (read it)."""
        if api not in self._disabled:
            return None
        return Step(
            label, f"not read: {api} is not enabled yet", "read once enabled; create if missing", unread=True
        )

    # --- APIs -------------------------------------------------------------------------------------
    def _apis(self) -> Step:
        client = self.clients.service_usage()
        parent = f"projects/{self.settings.project}"

        def enabled() -> set[str]:
            pages = client.list_services(request={"parent": parent, "filter": "state:ENABLED"})
            return {service.config.name for service in pages}

        missing = [api for api in APIS if api not in self._read("listing the enabled APIs", enabled)]
        self._disabled = set(missing)
        if not missing:
            return Step("APIs", f"{len(APIS)} enabled")

        def enable() -> None:
            operation = client.batch_enable_services(request={"parent": parent, "service_ids": missing})
            operation.result(timeout=300)
            # Setup reads the others itself (and waits on them); Vertex AI, which every later
            # command calls first, gets one read of its own here.
            if "aiplatform.googleapis.com" in missing:
                self._when_answering(self._probe_vertex)

        return Step("APIs", f"{len(missing)} disabled", f"enable {', '.join(missing)}", enable)

    def _probe_vertex(self) -> None:
        """One read of Vertex AI (a page of custom jobs): NotAnsweringError while it says disabled."""
        import requests

        region, project = self.settings.region, self.settings.project
        base = self.settings.endpoint("aiplatform") or f"https://{region}-aiplatform.googleapis.com"
        try:
            response = self.clients.session().get(
                f"{base}/v1/projects/{project}/locations/{region}/customJobs",
                params={"pageSize": 1},
                timeout=30,
            )
        except requests.RequestException:
            return  # cannot tell from here; the first Vertex AI call will say
        if response.status_code == 403 and "SERVICE_DISABLED" in response.text:
            raise NotAnsweringError("aiplatform.googleapis.com", "Vertex AI does not answer yet")

    # --- bucket -----------------------------------------------------------------------------------
    def _bucket(self) -> Step:
        name, region = self.settings.bucket, self.settings.region
        unread = self._unread(f"bucket gs://{name}", "storage.googleapis.com")
        if unread:
            return unread
        client = self.clients.storage()
        from google.api_core import exceptions

        try:
            bucket = client.lookup_bucket(name)
        except exceptions.Forbidden as exc:
            disabled = self._not_answering(exc, f"reading bucket {name}")
            if disabled:
                raise disabled from None
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

        parent = f"projects/{self.settings.project}/locations/{self.settings.region}"
        name = f"{parent}/repositories/{self.settings.repository}"
        label = f"Docker repository {self.settings.repository}"
        unread = self._unread(label, "artifactregistry.googleapis.com")
        if unread:
            return unread
        client = self.clients.artifact_registry()
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
        email = self.settings.service_account_email
        label = f"service account {email}"
        unread = self._unread(label, "iam.googleapis.com")
        if unread:
            return unread
        iam = self.clients.iam()
        found = self._read(label, lambda: iam.get_service_account(self.settings.project, email))
        if found:
            return Step(label, "exists")

        def create() -> None:
            from google.api_core import exceptions

            with contextlib.suppress(exceptions.Conflict):
                iam.create_service_account(self.settings.project, self.settings.service_account, "Edge jobs")

        return Step(label, "missing", "create", create)

    def _project_roles(self) -> Step:
        resource = f"projects/{self.settings.project}"
        label = f"project roles of {self.settings.service_account}"
        unread = self._unread(label, "cloudresourcemanager.googleapis.com")
        if unread:
            return unread
        client = self.clients.projects()

        def read() -> Any:
            return client.get_iam_policy(
                request={"resource": resource, "options": {"requested_policy_version": 3}}
            )

        policy = self._read("reading the project's IAM policy", read)
        missing = [r for r in PROJECT_ROLES if not _has(policy, r, self._member)]
        if not missing:
            return Step(label, ", ".join(PROJECT_ROLES))

        def grant() -> None:
            self._update_policy(
                f"granting {', '.join(missing)}",
                read,
                lambda policy: _grant(policy, missing, self._member),
                lambda policy: client.set_iam_policy(request={"resource": resource, "policy": policy}),
            )

        return Step(label, "missing " + ", ".join(missing), "grant " + ", ".join(missing), grant)

    def _bucket_role(self, new: bool) -> Step:
        label = f"bucket role of {self.settings.service_account}"
        unread = self._unread(label, "storage.googleapis.com")
        if unread:
            return unread
        client = self.clients.storage()
        name = self.settings.bucket

        def read() -> Any:
            # Version 3: a policy holding conditional bindings read at version 1 comes back with
            # those bindings renamed, and writing it back would lose them
            # (https://cloud.google.com/iam/docs/policies#versions).
            return client.bucket(name).get_iam_policy(requested_policy_version=3)

        def grant() -> None:
            self._update_policy(
                f"granting {BUCKET_ROLE} on gs://{name}",
                read,
                lambda policy: _grant_bucket(policy, BUCKET_ROLE, self._member),
                lambda policy: client.bucket(name).set_iam_policy(policy),
            )

        if not new:
            policy = self._read("reading the bucket's IAM policy", read)
            if any(
                b["role"] == BUCKET_ROLE and self._member in b.get("members", ()) for b in policy.bindings
            ):
                return Step(label, f"{BUCKET_ROLE} on gs://{name}")
        return Step(label, "missing", f"grant {BUCKET_ROLE} on gs://{name}", grant)

    def _update_policy(
        self,
        doing: str,
        read: Callable[[], Any],
        change: Callable[[Any], bool],
        write: Callable[[Any], Any],
    ) -> None:
        """Read-modify-write of an IAM policy, carrying the etag read, as Google asks.

        A 409 or 412 means someone else wrote the policy between our read and our write: read it
        again and redo the change (https://cloud.google.com/iam/docs/policies#etag). A 400 "Service
        account ... does not exist" right after creating it is IAM's eventual consistency: wait
        (https://cloud.google.com/iam/docs/access-change-propagation), up to ACCOUNT_WAIT seconds.
        """
        from google.api_core import exceptions

        conflicts = 0
        started = time.monotonic()
        delays = backoff(2.0, 20.0)
        while True:
            policy = read()
            if not change(policy):
                return
            try:
                write(policy)
                return
            except (exceptions.Conflict, exceptions.PreconditionFailed, exceptions.Aborted):
                conflicts += 1
                if conflicts > CONFLICT_RETRIES:
                    raise
                self.notify(f"{doing}: the policy changed meanwhile; reading it again")
            except exceptions.BadRequest as exc:
                if not _account_missing(exc):
                    raise
                delay = delays()
                if time.monotonic() - started + delay > ACCOUNT_WAIT:
                    raise
                self.notify(
                    f"{doing}: IAM does not see {self.settings.service_account_email} yet (a new "
                    f"account takes a minute or more); trying again in {delay:.0f} s"
                )
                time.sleep(delay)

    # --- tracking secret --------------------------------------------------------------------------
    def _secret(self, new_account: bool) -> list[Step]:
        from google.api_core import exceptions

        project = f"projects/{self.settings.project}"
        name = f"{project}/secrets/{self.settings.tracking_secret}"
        label = f"secret {self.settings.tracking_secret}"
        unread = self._unread(label, "secretmanager.googleapis.com")
        if unread:
            return [unread]
        client = self.clients.secret_manager()
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
            raise self._not_answering(exc, f"reading {name}") or explain(exc, f"reading {name}") from None
        return bytes(response.payload.data).decode("utf-8", "replace")

    def _secret_role(self, client: Any, name: str, new: bool) -> Step:
        label = f"secret role of {self.settings.service_account}"

        def read() -> Any:
            return client.get_iam_policy(
                request={"resource": name, "options": {"requested_policy_version": 3}}
            )

        def grant() -> None:
            self._update_policy(
                f"granting {SECRET_ROLE} on the secret",
                read,
                lambda policy: _grant(policy, [SECRET_ROLE], self._member),
                lambda policy: client.set_iam_policy(request={"resource": name, "policy": policy}),
            )

        if not new:
            policy = self._read("reading the secret's IAM policy", read)
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


def _account_missing(exc: BaseException) -> bool:
    message = str(getattr(exc, "message", "") or exc)
    return "Service account" in message and "does not exist" in message


def _grant_bucket(policy: Any, role: str, member: str) -> bool:
    """Add `member` to the role's one unconditional binding in a Cloud Storage policy (v3 bindings,
    members as sets); whether anything changed. Never a second binding for a role already bound."""
    for binding in policy.bindings:
        if binding["role"] == role and not binding.get("condition"):
            if member in binding["members"]:
                return False
            binding["members"] = {*binding["members"], member}
            return True
    policy.bindings.append({"role": role, "members": {member}})
    return True


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
