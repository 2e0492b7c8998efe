"""Image names, tags from git, registry errors and credentials, without an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import containers as images
from edge.containers import ImageError
from tests.gitrepo import git


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("one\n")
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")
    git(tmp_path, "add", "src/a.py", "params.yaml")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_a_clean_tree_is_tagged_with_its_commit(checkout: Path) -> None:
    state = images.git_state(checkout)
    assert state.commit == git(checkout, "rev-parse", "HEAD")
    assert state.branch == "main"
    assert not state.dirty
    assert state.tag == state.commit[:12]
    assert state.tags == (state.commit, state.commit[:12])


def test_uncommitted_changes_get_a_dirty_tag_that_follows_the_content(checkout: Path) -> None:
    (checkout / "src" / "a.py").write_text("two\n")
    first = images.git_state(checkout)
    assert first.dirty
    assert first.tag.startswith(f"{first.commit[:12]}-dirty-")
    assert images.git_state(checkout).tag == first.tag  # same changes, same tag
    (checkout / "src" / "new.py").write_text("untracked files count too\n")
    assert images.git_state(checkout).tag != first.tag


def test_params_and_other_files_outside_the_images_sources_keep_the_commit_tag(checkout: Path) -> None:
    (checkout / "params.yaml").write_text("train:\n  epochs: 3\n")  # `dvc exp run -S train.epochs=3`
    (checkout / "dvc.lock").write_text("schema: '2.0'\n")
    state = images.git_state(checkout)
    assert not state.dirty
    assert state.tag == state.commit[:12]


def test_building_outside_git_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a git checkout"):
        images.git_state(tmp_path)


def test_image_references() -> None:
    assert images.image_ref("trainer", "abc") == "edge-trainer:abc"
    assert images.image_ref("webapp", "abc", "127.0.0.1:5000/edge/") == "127.0.0.1:5000/edge/edge-webapp:abc"
    with pytest.raises(ImageError, match="trainer, trainer-gpu, webapp"):
        images.image_ref("mongo", "abc")


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        ("unauthorized: authentication required", "refused the credentials"),
        ("denied: Permission 'artifactregistry.repositories.uploadArtifacts'", "refused the credentials"),
        ("Get http://127.0.0.1:1/v2/: dial tcp 127.0.0.1:1: connection refused", "cannot be reached"),
        ("http: server gave HTTP response to HTTPS client", "insecure-registries"),
    ],
)
def test_registry_refusals_are_explained(error: str, hint: str) -> None:
    message = images.explain_push_error("r/edge-trainer:t", error)
    assert hint in message
    assert error in message


def test_only_google_registries_get_a_google_token() -> None:
    assert images.registry_auth("127.0.0.1:5000/edge") is None
    assert images.registry_auth("ghcr.io/someone") is None


def test_no_google_credentials_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No key file, no gcloud configuration, and the metadata server on a dead port (tests/conftest.py).
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    with pytest.raises(ImageError, match="gcloud auth application-default login"):
        images.registry_auth("europe-west4-docker.pkg.dev/project/repo")


def test_push_without_a_registry_or_edge_yaml_says_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from edge.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGE_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["image", "push", "webapp"])
    assert result.exit_code == 1
    assert "pass --registry" in result.output


def test_an_accelerator_in_edge_yaml_adds_the_gpu_trainer() -> None:
    assert images.default_images(None) == ["webapp", "trainer"]
    assert images.default_images("NVIDIA_TESLA_T4") == ["webapp", "trainer", "trainer-gpu"]


def test_a_push_without_a_terminal_prints_lines_while_the_engine_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in CI: the engine's events (docker's push stream) become lines, and silence gets a heartbeat."""
    import time

    from edge.cli.image import push_progress

    monkeypatch.setenv("EDGE_PROGRESS_SECONDS", "0.1")
    events = [
        {"status": "The push refers to repository [r/edge-trainer]"},
        {"id": "a1b2", "status": "Preparing", "progressDetail": {}},
        {"id": "a1b2", "status": "Pushing", "progressDetail": {"current": 5_000_000, "total": 90_000_000}},
        {"id": "c3d4", "status": "Layer already exists", "progressDetail": {}},
        {"id": "a1b2", "status": "Pushed", "progressDetail": {}},
        {"id": "t", "status": "t: digest: sha256:" + "e" * 64 + " size: 1234"},
    ]
    with push_progress("Pushing r/edge-trainer:t") as on_event:
        for event in events[:3]:
            on_event(event)
        time.sleep(0.35)  # the engine uploads a large layer silently
        for event in events[3:]:
            on_event(event)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "Pushing r/edge-trainer:t"
    assert "  c3d4 layer already exists" in lines and "  a1b2 pushed" in lines
    heartbeats = [line for line in lines if line.startswith("Pushing r/edge-trainer:t: layer a1b2 5/90 MB (")]
    assert len(heartbeats) >= 2
