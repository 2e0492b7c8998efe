"""Static checks of the Docker Compose stack and its images (tests/containers/ runs them for real)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from tests.docker_env import IN_CI

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
TRAINER_DOCKERFILE = "services/trainer/Dockerfile"
WEBAPP_DOCKERFILE = "services/webapp/Dockerfile"
DOCKERFILES = sorted(path.relative_to(ROOT).as_posix() for path in ROOT.glob("services/*/Dockerfile"))
# The tools are dev dependencies: run the venv's own copies, whatever is on PATH.
VENV_BIN = Path(sys.executable).parent

# `${NAME}`, `${NAME:-default}`, `${NAME:?error}`... and `$NAME`; `$$` is compose's escaped `$`.
INTERPOLATION = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?P<modifier>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))")
CONTAINER_VARIABLE = re.compile(r"\$\$\{?([A-Za-z_]\w*)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def strings(node: object) -> Iterator[str]:
    """Yield every string in a parsed YAML document, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolations(node: object) -> Iterator[tuple[str, str]]:
    """Yield (variable, modifier) for each variable compose substitutes from the environment."""
    for text in strings(node):
        for match in INTERPOLATION.finditer(text.replace("$$", "")):
            yield match["braced"] or match["bare"], match["modifier"] or ""


def env_example() -> dict[str, tuple[str, list[str]]]:
    """Map each variable in .env.example to its value and the comment lines just above it."""
    entries: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif "=" in line:
            name, value = line.split("=", 1)
            entries[name.strip()] = (value, comments)
            comments = []
        else:
            comments = []
    return entries


def dockerfile_exec_form(dockerfile: str, instruction: str) -> list[str]:
    """Return the last exec-form (JSON) ENTRYPOINT or CMD of a Dockerfile, the final stage's."""
    found: list[str] = []
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith(f"{instruction} ["):
            found = json.loads(line.removeprefix(instruction))
    assert found, f"{dockerfile} has no exec-form {instruction}"
    return found


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / args[0]), *args[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    # The schema ships inside check-jsonschema, so this runs offline.
    done = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    done = run_tool("hadolint", "--no-color", "--failure-threshold", "warning", dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_images_are_linted() -> None:
    assert {TRAINER_DOCKERFILE, WEBAPP_DOCKERFILE} <= set(DOCKERFILES)


@pytest.mark.parametrize("dockerfile", [TRAINER_DOCKERFILE, WEBAPP_DOCKERFILE])
def test_images_run_as_a_non_root_user(dockerfile: str) -> None:
    users = [
        line.split()[1] for line in (ROOT / dockerfile).read_text().splitlines() if line.startswith("USER ")
    ]
    assert users, f"{dockerfile} runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


@pytest.mark.parametrize("dockerfile", [TRAINER_DOCKERFILE, WEBAPP_DOCKERFILE])
def test_images_copy_only_files_that_exist(dockerfile: str) -> None:
    for line in (ROOT / dockerfile).read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or any(word.startswith("--from=") for word in words):
            continue
        for source in words[1:-1]:
            assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which is not in the repository"


def test_trainer_image_runs_the_edge_cli() -> None:
    assert dockerfile_exec_form(TRAINER_DOCKERFILE, "ENTRYPOINT") == ["edge"]


def test_every_published_port_is_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond this machine"
    assert published, "the stack publishes no port at all"


def test_env_example_lists_exactly_the_variables_compose_reads(compose: dict[str, Any]) -> None:
    used = {name for name, _ in interpolations(compose)}
    listed = set(env_example())
    assert used - listed == set(), "read by compose.yaml but missing from .env.example"
    assert listed - used == set(), "in .env.example but never read by compose.yaml"


def test_every_variable_in_env_example_is_explained() -> None:
    for name, (_, comments) in env_example().items():
        assert comments, f"{name} in .env.example has no comment above it"


def test_credentials_fail_fast_when_unset(compose: dict[str, Any]) -> None:
    credentials = [
        (name, modifier)
        for name, modifier in interpolations(compose)
        if name.endswith(("_USER", "_PASSWORD"))
    ]
    assert credentials
    for name, modifier in credentials:
        assert modifier.startswith(":?"), f"${{{name}{modifier}}} should fail with ${{{name}:?...}}"


def test_container_side_variables_are_set_on_their_service(compose: dict[str, Any]) -> None:
    # `$$NAME` reaches the container's shell as `$NAME`, so the service must define NAME.
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: write environment as a mapping"
        for text in strings({k: v for k, v in service.items() if k != "environment"}):
            for variable in CONTAINER_VARIABLE.findall(text):
                assert variable in environment, f"{name} uses $${variable} but does not set it"


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert conditions == {
        "mongo": {},
        "omniboard": {"mongo": "service_healthy"},
        "trainer": {"mongo": "service_healthy"},
        "model": {"trainer": "service_completed_successfully"},
        "webapp": {"model": "service_healthy"},
        "prometheus": {"model": "service_healthy"},
        "grafana": {"prometheus": "service_healthy"},
    }
    # A service_healthy condition can only be met by a service with a healthcheck.
    for deps in conditions.values():
        for dep, condition in deps.items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    assert named == {"mongo-data", "edge-data", "edge-models", "edge-runs", "edge-predictions"}
    mounts = {
        mount.split(":")[1]: mount.split(":")[0]
        for service in compose["services"].values()
        for mount in service.get("volumes", [])
    }
    assert mounts["/data/db"] == "mongo-data"
    assert mounts["/app/data"] == "edge-data"
    assert mounts["/app/store"] == "edge-models"
    assert mounts["/app/runs"] == "edge-runs"
    assert mounts["/app/predictions"] == "edge-predictions"


def test_mongo_initialises_from_services_tracking(compose: dict[str, Any]) -> None:
    sources = [
        mount.split(":")[0]
        for mount in compose["services"]["mongo"]["volumes"]
        if ":/docker-entrypoint-initdb.d/" in mount
    ]
    assert sources
    for source in sources:
        assert source.startswith("./services/tracking/")
        assert (ROOT / source).is_file(), f"{source} is missing"


def is_group(command: Any) -> bool:
    # Typer ships its own copy of click, so test the shape rather than click.Group.
    return hasattr(command, "commands")


def resolve(group: Any, args: list[str]) -> tuple[tuple[str, ...], Any, list[str]]:
    """Follow subcommand names from `group`; return the path, the command and its arguments."""
    path: list[str] = []
    command = group
    while is_group(command) and args and args[0] in command.commands:
        path.append(args[0])
        command = command.commands[args[0]]
        args = args[1:]
    return tuple(path), command, args


@pytest.mark.parametrize("service", ["trainer", "model"])
def test_trainer_image_commands_exist_in_the_edge_cli(compose: dict[str, Any], service: str) -> None:
    from edge.cli import app

    spec = compose["services"][service]
    assert spec["build"]["dockerfile"] == TRAINER_DOCKERFILE
    args = spec["command"]
    assert isinstance(args, list), "exec form, so ENTRYPOINT edge receives the words unchanged"
    path, command, rest = resolve(typer.main.get_command(app), args)
    assert path and not is_group(command), f"`edge {' '.join(args)}` is not an edge command"
    options = {name for param in command.params for name in param.opts + param.secondary_opts}
    for word in rest:
        if word.startswith("-"):
            assert word.split("=")[0] in options, f"`edge {' '.join(path)}` has no {word} option"


def test_webapp_image_serves_the_webapp_app_factory(compose: dict[str, Any]) -> None:
    spec = compose["services"]["webapp"]
    assert spec["build"]["dockerfile"] == WEBAPP_DOCKERFILE
    args = spec.get("command") or dockerfile_exec_form(WEBAPP_DOCKERFILE, "CMD")
    assert args[:3] == ["python", "-m", "edge_webapp"], shlex.join(args)
    module = importlib.import_module("edge_webapp")
    assert callable(module.create_app)
    # The options are the entry point's own, and the workers are explicit.
    from edge_webapp.__main__ import main

    with pytest.raises(SystemExit) as asked_for_help:
        main(["--help"])
    assert asked_for_help.value.code == 0
    assert "--threads" in args and "--channel-timeout" in args


def test_dockerignore_keeps_data_secrets_and_caches_out_of_build_contexts() -> None:
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    for kept_out in (".git", ".env", ".venv", "**/__pycache__", "data", "models", "runs"):
        assert kept_out in patterns, f".dockerignore lets {kept_out} into the build context"
    # The images copy these, so they must stay in the context.
    for needed in ("src", "services", "pyproject.toml", "uv.lock", "README.md", "params.yaml"):
        assert needed not in patterns, f".dockerignore hides {needed}, which an image copies"


OFFLINE_FILE = ROOT / "compose.offline.yaml"


def test_offline_override_follows_the_compose_specification() -> None:
    done = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.offline.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_offline_override_seeds_the_trainer_from_the_mounted_copy() -> None:
    trainer = yaml.safe_load(OFFLINE_FILE.read_text())["services"]["trainer"]
    inside = trainer["environment"]["EDGE_DATA_SOURCE"]
    [mount] = trainer["volumes"]
    source, target, mode = mount.rsplit(":", 2)
    assert (target, mode) == (inside, "ro")
    assert source.startswith("${EDGE_DATA_SOURCE:?"), "a clear error when the folder is not set"
    # Documented where users set it: commented out in .env.example, with COMPOSE_FILE naming the file.
    example = ENV_EXAMPLE.read_text()
    assert "\n#EDGE_DATA_SOURCE=" in example
    assert "\n#COMPOSE_FILE=compose.yaml:compose.offline.yaml\n" in example


def test_example_passwords_are_empty_so_compose_refuses_to_start(compose: dict[str, Any]) -> None:
    passwords = {name: value for name, (value, _) in env_example().items() if name.endswith("_PASSWORD")}
    assert len(passwords) >= 3
    assert all(value == "" for value in passwords.values()), "no usable example password in .env.example"
    # `${VAR:?message}` fails on an empty value as on a missing one, and says what to do.
    for name, modifier in interpolations(compose):
        if name in passwords:
            assert modifier.startswith(":?") and ".env" in modifier


def test_compose_v1_refuses_the_example_passwords(tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        # .ci/run installs it: in CI a missing binary must not pass as a skip.
        if IN_CI:
            pytest.fail("CI must run this check, but docker-compose (Compose v1) is not installed")
        pytest.skip("docker-compose (Compose v1) is not installed: apt-get install docker-compose")
    # v1 rejects only the top-level `name:`; the interpolation rules are the same as v2's.
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    document.pop("name")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(document))
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    done = subprocess.run(
        [binary, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "_PASSWORD in .env to a password of your own" in done.stderr, done.stderr


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} runs {image}, which is not pinned"


def test_omniboard_is_built_at_one_pinned_version(compose: dict[str, Any]) -> None:
    omniboard = compose["services"]["omniboard"]
    version = omniboard["build"]["args"]["OMNIBOARD_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert omniboard["image"] == f"edge-omniboard:{version}"
    dockerfile = (ROOT / omniboard["build"]["context"] / "Dockerfile").read_text()
    assert f"ARG OMNIBOARD_VERSION={version}" in dockerfile


def locked_versions(package: str) -> set[str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {entry["version"] for entry in lock["package"] if entry["name"] == package}


def test_gpu_trainer_installs_tensorflow_with_cuda_at_the_locked_version() -> None:
    from edge import containers as images

    dockerfile = (ROOT / TRAINER_DOCKERFILE).read_text()
    assert "ARG TRAINER_VARIANT=cpu" in dockerfile
    # The version comes from the installed (locked) tensorflow-cpu, so the two cannot drift apart...
    assert 'version("tensorflow-cpu")' in dockerfile
    assert '"tensorflow[and-cuda]==${version}"' in dockerfile
    # ...and the same version of the full `tensorflow` package exists: the lock holds it for macOS.
    assert locked_versions("tensorflow-cpu") == locked_versions("tensorflow")
    assert images.IMAGES["trainer-gpu"] == ("trainer", {"TRAINER_VARIANT": "gpu"})
    assert images.trainer_image_for("NVIDIA_TESLA_T4") == "trainer-gpu"
    assert images.trainer_image_for(None) == "trainer"
