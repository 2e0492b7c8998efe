"""A model's lineage and its images' tags read git the same way: the commit, and whether the code
differs from it. Real git checkouts in temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import containers, lineage
from tests.gitrepo import git


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A project as a fresh clone has it: code, params.yaml, dvc.lock and reports/ in git."""
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "remote", "add", "origin", "https://user:token@example.com/team/edge.git")
    (tmp_path / "src" / "edge").mkdir(parents=True)
    (tmp_path / "src" / "edge" / "train.py").write_text("EPOCHS = 1\n")
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "reports" / "train").mkdir(parents=True)
    (tmp_path / "reports" / "train" / "metrics.json").write_text('{"val_accuracy": 0.9}\n')
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def recorded_dirty(root: Path) -> bool:
    """What a model's lineage says, checked against what the image tag says: they must agree."""
    info = lineage.git_info(root)
    assert info is not None
    tag = containers.git_state(root).tag
    assert info["dirty"] == ("-dirty-" in tag)
    return bool(info["dirty"])


def test_a_clean_checkout_names_its_commit_branch_and_remote_without_credentials(checkout: Path) -> None:
    assert lineage.git_info(checkout) == {
        "commit": git(checkout, "rev-parse", "HEAD"),
        "branch": "main",
        "remote": "https://example.com/team/edge.git",
        "dirty": False,
    }
    assert not recorded_dirty(checkout)


def test_what_the_pipeline_writes_and_deletes_is_not_a_change_of_code(checkout: Path) -> None:
    # While the train stage runs, DVC has deleted its outputs kept in git; after it, dvc.lock and
    # the reports are rewritten. A model trained in a fresh clone still comes from a clean commit.
    (checkout / "reports" / "train" / "metrics.json").unlink()
    (checkout / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (checkout / "reports" / "evaluate").mkdir()
    (checkout / "reports" / "evaluate" / "metrics.json").write_text("{}\n")
    assert git(checkout, "status", "--porcelain")  # git itself sees changes...
    assert not recorded_dirty(checkout)  # ...but none to the code


def test_an_experiments_params_are_not_a_change_of_code(checkout: Path) -> None:
    (checkout / "params.yaml").write_text("train:\n  epochs: 3\n")  # `dvc exp run -S train.epochs=3`
    assert not recorded_dirty(checkout)


@pytest.mark.parametrize("change", ["edit", "new file", "staged", "deleted"])
def test_any_change_to_the_code_makes_lineage_and_tag_dirty(checkout: Path, change: str) -> None:
    code = checkout / "src" / "edge" / "train.py"
    if change == "edit":
        code.write_text("EPOCHS = 2\n")
    elif change == "new file":
        (checkout / "src" / "edge" / "new.py").write_text("untracked files count too\n")
    elif change == "staged":
        code.write_text("EPOCHS = 2\n")
        git(checkout, "add", "-A")
    else:
        code.unlink()
    assert recorded_dirty(checkout)


def test_a_detached_head_has_no_branch(checkout: Path) -> None:
    git(checkout, "checkout", "-q", "--detach")
    info = lineage.git_info(checkout)
    assert info is not None and info["branch"] is None


def test_without_git_the_lineage_comes_from_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("EDGE_GIT_BRANCH", "main")
    monkeypatch.setenv("EDGE_GIT_SOURCE", "https://user:token@github.com/org/edge.git")
    monkeypatch.setenv("EDGE_GIT_DIRTY", "")
    assert lineage.git_info(tmp_path) == {
        "commit": "a" * 40,
        "branch": "main",
        "remote": "https://github.com/org/edge.git",
        "dirty": False,
    }
    monkeypatch.setenv("EDGE_GIT_COMMIT", "")
    assert lineage.git_info(tmp_path) is None
