"""Where a model came from: the git commit of its code and the DVC data version of its inputs.

The one reader of git: a model's lineage and its images' tags (edge.containers) come from `git_state`.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from edge import envsettings

# The code a model and its images are made from. Only a difference here from the commit makes a
# checkout "dirty", in a model's lineage and in an image's tag alike, so the two always agree:
# - experiment settings are not code: params.yaml is recorded in full with every run (the Sacred
#   config, DVC's params) and travels to a Vertex AI job through gs://, so `dvc exp run -S
#   train.epochs=3` still names the commit's code and finds the commit's image;
# - the pipeline's results are not code: DVC deletes a stage's outputs before running it (the train
#   stage's reports/train/*.json and .csv, kept in git, are gone while it trains) and rewrites
#   dvc.lock and reports/ after it, so a model trained by `make up` in a fresh clone would otherwise
#   always be recorded as made from a dirty tree.
CODE_PATHS = ("src", "services", "pyproject.toml", "uv.lock", ".python-version", ".dockerignore")


@dataclass(frozen=True)
class GitState:
    """The commit a checkout is at, and a hash of how its code (CODE_PATHS) differs from it, if it does."""

    commit: str
    branch: str | None
    remote: str | None
    code_changes: str | None = None

    @property
    def dirty(self) -> bool:
        """Whether the code differs from the commit: tracked files changed, or new files not ignored."""
        return self.code_changes is not None

    @property
    def tag(self) -> str:
        """The image tag of this code: the short commit, with `-dirty-<hash>` when the code has changes."""
        short = self.commit[:12]
        return f"{short}-dirty-{self.code_changes[:8]}" if self.code_changes else short

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags an image of this code may have been pushed with: CI's full commit ($CIRCLE_SHA1),
        then `tag`."""
        return (self.tag,) if self.code_changes else (self.commit, self.tag)

    def lineage(self) -> dict[str, Any]:
        """The `git` part of a model's lineage."""
        return {"commit": self.commit, "branch": self.branch, "remote": self.remote, "dirty": self.dirty}


def git_state(root: Path = Path()) -> GitState | None:
    """Read the commit a checkout is at and whether its code differs from it; None outside git.

    The code is CODE_PATHS; it differs when a tracked file there is changed, added or deleted against
    the commit (staged or not), or a new file there is not ignored by .gitignore. The hash covers
    those changes' content, so the same edits give the same hash. The branch is None when HEAD is
    detached (as in CI), and the remote carries no credentials.
    """
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return None
    changes = hashlib.sha256()
    dirty = False
    diff = _git(root, "diff", "HEAD", "--binary", "--", *CODE_PATHS, strip=False)
    if diff:
        dirty = True
        changes.update(diff.encode())
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS)
    for name in (untracked or "").splitlines():
        dirty = True
        changes.update(name.encode())
        path = root / name
        if path.is_file():
            changes.update(path.read_bytes())
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    remote = strip_credentials(_git(root, "config", "--get", "remote.origin.url") or "") or None
    detached = branch == "HEAD"
    return GitState(commit, None if detached else branch, remote, changes.hexdigest() if dirty else None)


def checkout_root(start: Path = Path()) -> Path | None:
    """The top directory of the git checkout `start` is in; None outside git."""
    top = _git(start, "rev-parse", "--show-toplevel")
    return Path(top) if top else None


def git_info(root: Path = Path()) -> dict[str, Any] | None:
    """Return commit, branch, remote URL and dirty flag (see `git_state` for what dirty means); from
    the image's build args without git."""
    state = git_state(root)
    return state.lineage() if state else baked_git_info()


def baked_git_info() -> dict[str, Any] | None:
    """Return the commit an image was built from (`edge image build` bakes it in), or None."""
    # Containers (compose, Vertex AI) have no .git: the Dockerfiles turn the build args
    # EDGE_GIT_COMMIT, _BRANCH, _SOURCE and _DIRTY into environment variables of the same names.
    baked = envsettings.environment()
    if not baked.git_commit:
        return None
    return {
        "commit": baked.git_commit,
        "branch": baked.git_branch,
        "remote": strip_credentials(baked.git_source or "") or None,
        "dirty": baked.git_dirty,
    }


def strip_credentials(url: str) -> str:
    """Drop the user and password (or token) from a URL such as https://user:token@host/repo."""
    if "://" not in url:
        return url  # scp-like `git@host:org/repo.git` carries a user name, never a secret
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        return url
    # Over HTTPS the user part may itself be a token; over SSH a bare user name is no secret.
    if parts.scheme.startswith("http") or ":" in userinfo:
        return urlunsplit(parts._replace(netloc=hosts))
    return url


def data_version(root: Path = Path()) -> dict[str, str]:
    """Return the DVC md5 of every raw (`.dvc` files) and prepared (`dvc.lock`) data output."""
    versions: dict[str, str] = {}
    for dvc_file in sorted((root / "data").rglob("*.dvc")):
        for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", []):
            path = (dvc_file.parent / out["path"]).relative_to(root).as_posix()
            versions[path] = out["md5"]
    lock_path = root / "dvc.lock"
    if lock_path.is_file():
        stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})
        for out in stages.get("prepare", {}).get("outs", []):
            versions[out["path"]] = out["md5"]
    return versions


def content_version(raw_dir: Path) -> str:
    """Hash the raw files' content: the data version where no DVC metadata is at hand."""
    digest = hashlib.md5(usedforsecurity=False)
    for path in sorted(p for p in raw_dir.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _git(root: Path, *args: str, strip: bool = True) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if strip else done.stdout
