"""The model test suite's verdict on one model, kept in the model's folder so that it travels with it.

The evaluate stage judges a model and writes `verdict.json` into its folder. Whatever serves a model
(`edge serve`, `edge up`, Compose, a Vertex AI endpoint) and the hot reload read it there, and serve
only a model that passed, unless told explicitly to serve a failed one.

The verdict names the model's version and content hash: a verdict copied beside another model does
not count. It is not part of the content hash itself (a verdict is about the content), and DVC does
not track it (`.dvcignore`), so judging a model leaves the pipeline's `models` output unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

VERDICT_FILE = "verdict.json"
Status = Literal["passed", "failed", "unjudged"]


@dataclass(frozen=True)
class FailedCheck:
    """One check of the suite that the model failed: what was measured against which floor."""

    check: str
    measured: float | None
    required: str
    note: str = ""
    # Why the check matters to the people the model answers.
    why: str = ""

    def describe(self) -> str:
        measured = "n/a" if self.measured is None else f"{self.measured:.4f}"
        return f"{self.check}{f' ({self.note})' if self.note else ''}: {measured}, needs {self.required}"


@dataclass(frozen=True)
class Verdict:
    """Whether a model passed its test suite, and what it failed."""

    model_version: str
    content_sha256: str
    passed: bool
    failed: list[FailedCheck] = field(default_factory=list)
    judged_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def status(self) -> Status:
        return "passed" if self.passed else "failed"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        raw = json.loads(text)
        failed = [FailedCheck(**item) for item in raw.pop("failed", [])]
        return cls(failed=failed, **raw)

    def describe(self) -> str:
        """One line: passed, or the checks it failed."""
        if self.passed:
            return f"model {self.model_version} passed its test suite"
        shown = "; ".join(f.describe() for f in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        count = len(self.failed)
        return f"model {self.model_version} failed {count} check(s) of its test suite: {shown}{more}"


def content_sha256(metadata: dict[str, Any]) -> str:
    """The content hash that a model's metadata names (empty for a model saved without one)."""
    content = metadata.get("content")
    return str(content.get("sha256", "")) if isinstance(content, dict) else ""


def write(model_dir: str, verdict: Verdict) -> None:
    """Write the verdict into a model folder (on `gs://`, into the published version)."""
    from edge import storage

    storage.write_text(storage.join(storage.resolve_dir(model_dir), VERDICT_FILE), verdict.to_json())


def read(model_dir: str, metadata: dict[str, Any]) -> Verdict | None:
    """The verdict on the model that `metadata` describes, or None when it was not judged.

    A verdict on another version or content (a copy, an older save) is no verdict on this one.
    """
    from edge import storage

    try:
        text = storage.read_text(storage.join(storage.resolve_dir(model_dir), VERDICT_FILE))
        verdict = Verdict.from_json(text)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):  # unreadable: as good as none, the model is judged again
        return None
    if verdict.model_version != str(metadata.get("version")):
        return None
    if verdict.content_sha256 != content_sha256(metadata):
        return None
    return verdict


def status_of(verdict: Verdict | None) -> Status:
    return verdict.status if verdict is not None else "unjudged"


class UnservableModelError(Exception):
    """A model that failed its test suite, or was never judged, and is not to be served."""


SERVE_ANYWAY = "--allow-failed-model"


def refuse_unless_passed(model_dir: str, metadata: dict[str, Any], verdict: Verdict | None) -> None:
    """Raise `UnservableModelError` with what to do, unless the model passed its suite."""
    version = metadata.get("version")
    if verdict is None:
        raise UnservableModelError(
            f"model {version} in {model_dir} has not been judged by its test suite, so it is not "
            f"served: run the evaluate stage (`dvc repro`, or `edge pipeline evaluate --model-dir "
            f"{model_dir}`), or serve it knowingly with `edge serve {SERVE_ANYWAY}`"
        )
    if not verdict.passed:
        raise UnservableModelError(
            f"{verdict.describe()}. It is not served: train another (e.g. `dvc exp run -S "
            f"train.seed=1`), restore the last passing one where DVC's cache or a remote holds it "
            f"(`git checkout HEAD -- dvc.lock && dvc checkout models`, or `dvc pull`), or serve it "
            f"knowingly with `edge serve {SERVE_ANYWAY}`"
        )
