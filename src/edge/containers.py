"""Containers on a Docker engine: build the trainer and webapp images with their lineage baked in,
push them by digest, find them in a registry, and run a local container (Omniboard).

The one module that imports the Docker SDK, and only in the functions that talk to an engine: naming
images and finding them in a registry (what a Vertex AI job submission needs) work without it. A
Google registry's access token comes from `edge.cloud.clients`, the one place Google credentials are
made, and only when pushing to or reading from one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import envsettings, lineage
from edge.cloud.errors import CloudError
from edge.lineage import GitState

if TYPE_CHECKING:
    import docker

SERVICES = ("trainer", "webapp")
# Every image `edge image` builds: the Dockerfile's service folder and the build arguments it needs.
# trainer-gpu is the trainer for accelerator machines (edge.yaml's accelerator_type).
IMAGES: dict[str, tuple[str, dict[str, str]]] = {
    "trainer": ("trainer", {}),
    "trainer-gpu": ("trainer", {"TRAINER_VARIANT": "gpu"}),
    "webapp": ("webapp", {}),
}
# Registries that take a Google access token as the password of the user `oauth2accesstoken`.
GOOGLE_REGISTRY_SUFFIXES = ("docker.pkg.dev", "gcr.io")
# Every manifest type a push may have stored: asking for them all makes the registry answer with the
# digest it stored, the one `docker push` reported (https://distribution.github.io/distribution/spec/api/).
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


class ImageError(CloudError):
    """A build or push that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class BuiltImage:
    """An image in the local engine: its tag (`edge-trainer:<tag>`) and content id."""

    service: str
    ref: str
    id: str
    size: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PushedImage:
    """An image in a registry: `ref` is `<registry>/edge-<service>@<digest>`, immutable."""

    service: str
    ref: str
    digest: str
    tagged: str


def image_name(service: str) -> str:
    if service not in IMAGES:
        raise ImageError(f"no image called {service!r}: choose from {', '.join(IMAGES)}")
    return f"edge-{service}"


def trainer_image_for(accelerator_type: str | None) -> str:
    """The trainer image a machine needs: the GPU variant when it has an accelerator."""
    return "trainer-gpu" if accelerator_type else "trainer"


def default_images(accelerator_type: str | None = None) -> list[str]:
    """What `edge image build` builds without arguments: the webapp and the trainer(s) jobs need."""
    return ["webapp", "trainer", *([trainer_image_for(accelerator_type)] if accelerator_type else [])]


def image_ref(service: str, tag: str, registry: str | None = None) -> str:
    """`edge-trainer:<tag>`, or `<registry>/edge-trainer:<tag>` (registry may hold a path)."""
    name = image_name(service)
    return f"{registry.rstrip('/')}/{name}:{tag}" if registry else f"{name}:{tag}"


def repository_root(start: Path = Path()) -> Path:
    """The checkout's top directory, where both images' build context is."""
    root = lineage.checkout_root(start) or start.resolve()
    if not (root / "services" / "trainer" / "Dockerfile").is_file():
        raise ImageError(f"{root} is not an Edge checkout (no services/trainer/Dockerfile): run from one")
    return root


def git_state(root: Path) -> GitState:
    """The commit the images are built from and whether their code differs from it (edge.lineage)."""
    state = lineage.git_state(root)
    if state is None:
        raise ImageError(f"{root} is not a git checkout with a commit: images are tagged with the commit")
    return state


def engine() -> docker.DockerClient:
    """A client of the Docker engine that DOCKER_HOST (or the default socket) points at."""
    import docker
    import docker.errors

    try:
        # Generous: removing or pushing a 2 GB image on a busy machine can take minutes.
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        where = envsettings.environment().docker_host or "the default socket /var/run/docker.sock"
        raise ImageError(
            f"no Docker engine answers at {where}: start Docker (or dockerd), or set DOCKER_HOST ({exc})"
        ) from exc
    return client


def docker_cli() -> str:
    """The docker client that can run a BuildKit build: $DOCKER, else the first one on PATH that can."""
    if chosen := envsettings.environment().docker:
        return chosen
    candidates = [path for path in _all_on_path("docker")] + ["/usr/bin/docker"]
    for candidate in dict.fromkeys(candidates):
        if _can_buildkit(candidate):
            return candidate
    raise ImageError(
        "no docker client here can build with BuildKit: install the buildx plugin, or Debian's "
        "docker.io (its /usr/bin/docker has BuildKit built in); set DOCKER=/path/to/docker to choose"
    )


def build(
    service: str,
    *,
    root: Path,
    tag: str | None = None,
    python_image: str | None = None,
    build_args: dict[str, str] | None = None,
    client: docker.DockerClient | None = None,
    quiet: bool = False,
) -> BuiltImage:
    """Build `edge-<service>:<tag>` (default tag: the commit) from its services/*/Dockerfile.

    The build's own progress goes to the terminal, unless `quiet`, when it is kept for the error.
    """
    client = client or engine()
    state = git_state(root)
    ref = image_ref(service, tag or state.tag)
    folder, variant_args = IMAGES[service]
    args = {
        "EDGE_GIT_COMMIT": state.commit,
        "EDGE_GIT_BRANCH": state.branch or "",
        "EDGE_GIT_SOURCE": state.remote or "",
        "EDGE_GIT_DIRTY": "true" if state.dirty else "",
        "EDGE_BUILD_CREATED": datetime.now(UTC).replace(microsecond=0).isoformat(),
        **({"PYTHON_IMAGE": python_image} if python_image else {}),
        **variant_args,
        **(build_args or {}),
    }
    with tempfile.TemporaryDirectory(prefix="edge-build-") as scratch:
        iidfile = Path(scratch) / "iid"
        command = [
            docker_cli(),
            "build",
            # Host networking: package downloads work where containers have no bridge network.
            "--network",
            "host",
            "--file",
            str(root / "services" / folder / "Dockerfile"),
            "--tag",
            ref,
            "--iidfile",
            str(iidfile),
            *(part for name, value in args.items() for part in ("--build-arg", f"{name}={value}")),
            *(["--progress", "plain"] if quiet else []),
            str(root),
        ]
        # The CLI rather than the SDK: the SDK's build() has no BuildKit session, and the
        # Dockerfiles need BuildKit for `RUN --mount=type=cache` (the uv cache between builds).
        done = subprocess.run(
            command,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            capture_output=quiet,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stderr or "").splitlines()[-25:]) if quiet else "see the output above"
            raise ImageError(f"building {ref} failed (exit {done.returncode}):\n{tail}")
        image_id = iidfile.read_text().strip()
    image = client.images.get(image_id)
    return BuiltImage(service, ref, image.id, int(image.attrs.get("Size", 0)), dict(image.labels))


PushEvents = Callable[[dict[str, Any]], None]


def push(
    service: str,
    registry: str,
    *,
    tag: str,
    client: docker.DockerClient | None = None,
    on_event: PushEvents | None = None,
) -> PushedImage:
    """Push the local `edge-<service>:<tag>` to `<registry>/edge-<service>:<tag>`; return its digest."""
    import docker.errors

    client = client or engine()
    local = image_ref(service, tag)
    remote = image_ref(service, tag, registry)
    repository = remote.rsplit(":", 1)[0]
    try:
        image = client.images.get(local)
    except docker.errors.ImageNotFound:
        raise ImageError(f"no image {local} in the engine: build it first with `edge image build`") from None
    already_tagged = remote in image.tags
    image.tag(repository, tag)
    digest = None
    try:
        events: Iterator[dict[str, Any]] = client.api.push(
            repository, tag=tag, stream=True, decode=True, auth_config=registry_auth(registry)
        )
        for event in events:
            if "error" in event:
                raise ImageError(explain_push_error(remote, str(event["error"])))
            digest = (event.get("aux") or {}).get("Digest") or digest
            if on_event:
                on_event(event)
    except docker.errors.APIError as exc:
        raise ImageError(explain_push_error(remote, str(exc.explanation or exc))) from exc
    except ImageError:
        if not already_tagged:  # leave the engine as it was: no tag for a registry that refused
            client.images.remove(remote)
        raise
    if not digest:
        raise ImageError(f"the registry took {remote} but reported no digest: check the registry's logs")
    return PushedImage(service, f"{repository}@{digest}", digest, remote)


def find_pushed(service: str, registry: str, tags: tuple[str, ...]) -> str | None:
    """`<registry>/edge-<service>@<digest>` for the first of `tags` the registry holds, else None.

    Asks the registry itself (the Docker Registry HTTP API v2), not a Docker engine: in CI the image
    was built and pushed by another job, on another machine.
    """
    import requests

    host, _, path = registry.rstrip("/").partition("/")
    repository = f"{path}/{image_name(service)}" if path else image_name(service)
    local = host.split(":", 1)[0] in {"127.0.0.1", "localhost"}
    base = f"{'http' if local else 'https'}://{host}/v2/{repository}/manifests/"
    session = requests.Session()
    session.headers["Accept"] = ", ".join(MANIFEST_TYPES)
    try:
        for tag in tags:
            answer = session.head(base + tag, timeout=30)
            if answer.status_code == 401:
                _authenticate(session, answer, registry, repository)
                answer = session.head(base + tag, timeout=30)
            if answer.status_code == 404:
                continue
            if answer.status_code in (401, 403):
                raise ImageError(
                    f"the registry {host} refused to show {repository}:{tag} ({answer.status_code}): "
                    "reading it needs roles/artifactregistry.reader on the repository"
                )
            answer.raise_for_status()
            digest = answer.headers.get("Docker-Content-Digest")
            if not digest:
                raise ImageError(f"the registry {host} gave no digest for {repository}:{tag}")
            return f"{host}/{repository}@{digest}"
    except requests.RequestException as exc:
        raise ImageError(f"the registry {host} cannot be reached: check the host and port ({exc})") from exc
    return None


def _authenticate(session: Any, challenge: Any, registry: str, repository: str) -> None:
    """Answer a registry's 401: a bearer token from its token service, or basic credentials.

    The token handshake of https://distribution.github.io/distribution/spec/auth/token/ (Artifact
    Registry's too), with Google's `oauth2accesstoken` credentials for a Google registry.
    """
    import requests

    auth = registry_auth(registry)
    credentials = (auth["username"], auth["password"]) if auth else None
    header = challenge.headers.get("WWW-Authenticate", "")
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "basic" and credentials:
        session.auth = credentials
        return
    if scheme.lower() != "bearer":
        return
    fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    query = {"service": fields.get("service", ""), "scope": f"repository:{repository}:pull"}
    answer = requests.get(fields.get("realm", ""), params=query, auth=credentials, timeout=30)
    if answer.ok:
        token = answer.json().get("token") or answer.json().get("access_token")
        session.headers["Authorization"] = f"Bearer {token}"


def explain_push_error(ref: str, error: str) -> str:
    """Say what a registry's refusal means and what to try."""
    lowered = error.lower()
    if any(word in lowered for word in ("unauthorized", "denied", "authentication required", "403")):
        hint = (
            "the registry refused the credentials: for Artifact Registry check `gcloud auth "
            "application-default login` and the role roles/artifactregistry.writer on the repository; "
            "for another registry run `docker login HOST`"
        )
    elif "http response to https client" in lowered:
        hint = "the registry speaks plain HTTP: add it to the engine's insecure-registries (127.0.0.1 is)"
    elif any(word in lowered for word in ("connection refused", "no such host", "dial tcp", "timeout")):
        hint = "the registry cannot be reached: check the host and port, and that it runs"
    else:
        hint = "the registry refused the push"
    return f"pushing {ref} failed: {hint} ({error.strip()})"


def registry_auth(registry: str) -> dict[str, str] | None:
    """Credentials for a Google registry (a short-lived token); None lets the engine use its own."""
    host = registry.split("/", 1)[0]
    if not host.endswith(GOOGLE_REGISTRY_SUFFIXES):
        return None
    try:
        from edge.cloud.clients import access_token
    except ImportError as exc:
        raise ImageError("pushing to Google needs the cloud extra: `uv sync --extra cloud`") from exc
    try:
        token = access_token()
    except CloudError as exc:
        raise ImageError(str(exc)) from None
    return {"username": "oauth2accesstoken", "password": token, "serveraddress": host}


def pull_if_missing(image: str, client: docker.DockerClient | None = None) -> None:
    """Pull `image` unless the engine has it; ImageError says why a pull failed."""
    import docker.errors

    client = client or engine()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(image)
        except docker.errors.APIError as exc:
            raise ImageError(f"cannot pull {image} ({exc.explanation or exc})") from None


def run_on_localhost(
    image: str,
    *,
    port: int,
    container_port: int,
    environment: dict[str, str],
    name: str,
    client: docker.DockerClient | None = None,
) -> Any:
    """Start `image` in the background, published on 127.0.0.1:`port` only; return the container.

    `environment` goes into the container's environment, never on a command line, so it may hold a
    password. The container is removed when it stops.
    """
    client = client or engine()
    return client.containers.run(
        image,
        environment=environment,
        ports={f"{container_port}/tcp": ("127.0.0.1", port)},
        name=name,
        detach=True,
        auto_remove=True,
    )


def _all_on_path(program: str) -> list[str]:
    found = []
    for folder in os.get_exec_path():
        candidate = Path(folder) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found.append(str(candidate))
    return found


def _can_buildkit(cli: str) -> bool:
    """True for a client with buildx, or one from before 23.0, which has BuildKit built in."""
    if not shutil.which(cli):
        return False
    try:
        if subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=30).returncode == 0:
            return True
        version = subprocess.run(
            [cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) < 23
