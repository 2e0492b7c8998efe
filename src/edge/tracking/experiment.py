"""Run a body of work as a Sacred run, recorded in the local journal and, when reachable, in MongoDB.

A run holds: start and stop time, user, host, the git commit, remote and dirty flag, the config,
the source files the caller names, and whatever the body records through its `Recorder`: per-step
metrics, artifacts and information. Failures and Ctrl-C end the run as FAILED or INTERRUPTED with
the traceback, and propagate. The train stage (`edge.pipeline.tracked_train_stage`) is the body
that every trained model gets its run from; tracking knows nothing of the pipeline.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

from rich.console import Console

import edge
from edge import envsettings
from edge.tracking import observers

T = TypeVar("T")

EXPERIMENT_NAME = "edge-train"


def current_user() -> str:
    """Who runs this: $EDGE_USER (for CI or a cloud job started on someone's behalf), else the login."""
    if user := envsettings.environment().user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return "unknown"


def warn(message: str) -> None:
    """Print a tracking warning on stderr."""
    Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


class Recorder:
    """What a tracked body records into its run: per-step metrics, artifacts and information."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self.failure: str | None = None

    @property
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self._run.info
        return info

    def fail_after_recording(self, reason: str) -> None:
        """End the run as FAILED, with `reason`, once the body has returned."""
        self.failure = reason

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._run.log_scalar(name, float(value), step)

    def add_artifact(self, name: str, content: bytes, content_type: str) -> None:
        with tempfile.TemporaryDirectory(prefix="edge-artifact-") as tmp:
            path = Path(tmp, name)
            path.write_bytes(content)
            self._run.add_artifact(str(path), name=name, content_type=content_type)


@dataclass
class TrackedRun(Generic[T]):
    """A finished run: what the body returned and where the run was recorded."""

    value: T
    uuid: str
    journal_dir: Path
    mongo_id: Any | None


def tracked_run(
    body: Callable[[Recorder], T],
    *,
    config: dict[str, Any],
    info: dict[str, Any],
    runs_dir: Path | None = None,
    url: str | None = None,
    name: str = EXPERIMENT_NAME,
    sources: Sequence[ModuleType] = (),
    warn: observers.Warn = warn,
) -> TrackedRun[T]:
    """Run `body` as a Sacred run with `config`, recorded in the journal and, when `url`, in MongoDB.

    `url` defaults to $EDGE_TRACKING_URL and `runs_dir` to $EDGE_RUNS_DIR (or `runs`). The run keeps
    a copy of each module in `sources`: the code that decided what the body did.
    """
    journal = runs_dir if runs_dir is not None else observers.runs_dir()
    url = url if url is not None else observers.tracking_url()
    run_uuid = uuid.uuid4().hex
    ex = _experiment(name, info.get("git"))
    for module in sources:
        if module.__file__:
            ex.add_source_file(module.__file__)
    ex.add_config(json.loads(json.dumps(config)))
    holder: dict[str, Any] = {}

    def main(_run: Any) -> Any:
        holder["run"] = _run
        recorder = Recorder(_run)
        value = body(recorder)
        holder["value"] = value
        if recorder.failure is not None:
            raise RunFailedError(recorder.failure)
        return _run.info.get("result")

    ex.main(main)
    _log_to_the_current_stderr()
    ex.observers.append(observers.file_observer(journal))
    mongo = _mongo_observer(url, warn, lambda: str(journal / str(holder["run"]._id))) if url else None
    if mongo:
        ex.observers.append(mongo)
    try:
        run = ex.run(
            info={**info, "run_uuid": run_uuid, "user": current_user()},
            meta_info={"run_uuid": run_uuid},
            # Sacred's own capture of stdout/stderr, without its fd-level tee process.
            options={"--capture": "sys"},
        )
        run_id = run._id
    except RunFailedError:  # recorded as FAILED; the body's work stands
        run_id = holder["run"]._id
    return TrackedRun(holder["value"], run_uuid, journal / str(run_id), mongo.run_id if mongo else None)


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to `sys.stderr` as it is when the record is written (as Python's last-resort
    handler does), not as it was when the handler was made."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler's would store a stream; `stream` below finds it

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr


def _log_to_the_current_stderr() -> None:
    """Give the root logger a handler that writes to the current `sys.stderr`, unless it has one.

    Sacred's capture replaces `sys.stderr` for the length of a run. A library that logs for the first
    time inside the run (absl does when TensorFlow saves a model) calls `logging.basicConfig()`, whose
    handler would keep the capture's stream after the run has closed it: every record logged after the
    run (Sacred's own "Failed after" line first) would then print a "--- Logging error ---"
    traceback. With a handler in place, `basicConfig()` adds none. Records print as it would print them.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
        root.addHandler(handler)


class RunFailedError(Exception):
    """The body finished, and its run is to be recorded as FAILED for the reason given."""


def _unless_the_body_finished(record: logging.LogRecord) -> bool:
    """Keep a record of Sacred's run logger unless it is logged for a RunFailedError."""
    return not isinstance(sys.exc_info()[1], RunFailedError)


def _mongo_observer(url: str, warn: observers.Warn, journal_hint: Callable[[], str]) -> Any:
    try:
        store = observers.connect(url)
    except observers.TrackingUnavailableError as exc:
        warn(f"{exc}; recording this run in files only: copy it later with `edge experiments sync`")
        return None
    return observers.GuardedMongoObserver(store, warn, journal_hint)


def _experiment(name: str, git: dict[str, Any] | None) -> Any:
    with warnings.catch_warnings():
        # Sacred 0.8.7 imports setuptools' deprecated pkg_resources.
        warnings.simplefilter("ignore")
        try:
            from sacred import Experiment
            from sacred.utils import apply_backspaces_and_linefeeds
        except ModuleNotFoundError as exc:
            if exc.name != "pkg_resources":
                raise
            raise RuntimeError(
                "Sacred 0.8.7 needs pkg_resources, which setuptools 82 removed: install setuptools<82"
            ) from exc

    class TrainExperiment(Experiment):  # type: ignore[misc]
        def get_experiment_info(self) -> dict[str, Any]:
            # Sacred reads git from the package's own checkout; the project's (the working
            # directory's) is the one that says what was trained, so report that one.
            experiment_info: dict[str, Any] = super().get_experiment_info()  # type: ignore[no-untyped-call]
            if git:
                experiment_info["repositories"] = [
                    {"url": git.get("remote"), "commit": git.get("commit"), "dirty": git.get("dirty")}
                ]
            return experiment_info

    ex: Any = TrainExperiment(
        name,
        base_dir=str(Path(edge.__file__).parent),
        save_git_info=False,
        # The pid beside the hostname: a run whose process is gone shows as INTERRUPTED.
        additional_host_info=observers.process_host_info(),
    )
    ex.captured_out_filter = apply_backspaces_and_linefeeds
    logger = logging.getLogger("edge.tracking.sacred")
    logger.setLevel(logging.WARNING)
    # Sacred logs "Failed after ..." at ERROR for every failed run, where a RunFailedError means the
    # body finished and its caller says why the run failed: there the line would only read as a crash.
    logger.getChild(name).addFilter(_unless_the_body_finished)
    ex.logger = logger
    return ex


def run_info(lineage: dict[str, Any]) -> dict[str, Any]:
    """The lineage part of a run's info, in a shape every backend stores as is."""
    git = lineage.get("git")
    return {
        "git": dict(git) if git else None,
        # A list rather than a mapping: paths are not valid MongoDB field names everywhere.
        "data_version": [
            {"path": p, "md5": m} for p, m in sorted((lineage.get("data_version") or {}).items())
        ],
        "vertex_job": lineage.get("vertex_job"),
    }
