"""Where a model came from: the git commit and the DVC data version of its inputs."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from edge import envsettings


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_info(root: Path = Path()) -> dict[str, Any] | None:
    """Return commit, branch, remote URL and dirty flag; from the image's build args without git."""
    commit = _git(root, "rev-parse", "HEAD")
    if not commit:
        return baked_git_info()
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit,
        "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"),
        "remote": strip_credentials(_git(root, "config", "--get", "remote.origin.url") or "") or None,
        "dirty": bool(status),
    }


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
