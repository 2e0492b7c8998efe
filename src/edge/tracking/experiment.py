"""Run the train stage as a Sacred experiment, so that every trained model has a recorded run.

A run holds: start and stop time, user, host, the git commit, branch, remote and dirty flag, the DVC
data version, every hyperparameter (the whole of params.yaml is the Sacred config), per-epoch
metrics, the test metrics and three artifacts: the exported model, a confusion matrix and the
metrics. Failures and Ctrl-C end the run as FAILED or INTERRUPTED with the traceback, and propagate.

The test metrics come from the train run itself: once the model is exported it is scored on the
test split by the same code as the evaluate stage (it takes about a second), so each trained model
is one complete run. The evaluate stage still applies the quality gate, on its own.
"""

from __future__ import annotations

import getpass
import io
import json
import logging
import tarfile
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from rich.console import Console

import edge

# Sacred records the source of every module imported here: data and model are listed for that alone.
from edge import calibration, data, envsettings, evaluate, model, model_tests, pipeline, storage, train  # noqa: F401
from edge.tracking import observers

T = TypeVar("T")

EXPERIMENT_NAME = "edge-train"
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
MODEL_ARCHIVE = "model.tar.gz"
CONFUSION_PNG = "confusion_matrix.png"
# Not `metrics.json`: Sacred's file journal keeps the per-epoch metrics under that name.
METRICS_JSON = "final_metrics.json"
USER_ENV = "EDGE_USER"


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
    warn: observers.Warn = warn,
) -> TrackedRun[T]:
    """Run `body` as a Sacred run with `config`, recorded in the journal and, when `url`, in MongoDB.

    `url` defaults to $EDGE_TRACKING_URL and `runs_dir` to $EDGE_RUNS_DIR (or `runs`).
    """
    journal = runs_dir if runs_dir is not None else observers.runs_dir()
    url = url if url is not None else observers.tracking_url()
    run_uuid = uuid.uuid4().hex
    ex = _experiment(name, info.get("git"))
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


class RunFailedError(Exception):
    """The body finished, and its run is to be recorded as FAILED for the reason given."""


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
    ex.logger = logger
    return ex


def run_training(
    prepared_dir: str,
    model_dir: str,
    reports_dir: str,
    settings: pipeline.Params,
    lineage: dict[str, Any],
    *,
    on_epoch_end: train.EpochCallback | None = None,
) -> tuple[train.TrainResult, dict[str, Any]]:
    """Run the train stage as a tracked run; return what `train_stage` returns."""

    def body(recorder: Recorder) -> tuple[train.TrainResult, dict[str, Any]]:
        def epoch_end(epoch: int, row: dict[str, float]) -> None:
            recorder.log_metrics(epoch, {k: row[k] for k in EPOCH_METRICS if k in row})
            if on_epoch_end:
                on_epoch_end(epoch, row)

        # The model names its run (and the registry entry names both): model, run and registry
        # point at each other. The uuid is the run's key in the journal and in MongoDB alike; it goes
        # into the run record beside the model, not into the model, whose bytes the inputs decide.
        result, metadata, measured = pipeline.train_stage(
            prepared_dir,
            model_dir,
            reports_dir,
            settings.train,
            lineage,
            suite=settings.evaluate,
            on_epoch_end=epoch_end,
            tracking_run_id=recorder.info["run_uuid"],
        )
        _test, scores = pipeline.score_on_test(prepared_dir, model_dir)
        summary = {
            "model_version": metadata["version"],
            "epochs": len(result.history),
            "train_seconds": round(result.seconds, 1),
            "val_accuracy": result.final["val_accuracy"],
            "val_loss": result.final["val_loss"],
            "test_accuracy": scores.accuracy,
            "test_loss": scores.loss,
        }
        recorder.info["result"] = summary
        recorder.info["test"] = scores.metrics()
        recorder.info["model"] = {"version": metadata["version"], "dir": model_dir}
        recorder.add_artifact(MODEL_ARCHIVE, _archive(model_dir), "application/gzip")
        recorder.add_artifact(CONFUSION_PNG, evaluate.confusion_png(scores), "image/png")
        final = {"summary": summary, **scores.metrics()}
        recorder.add_artifact(METRICS_JSON, (json.dumps(final, indent=2) + "\n").encode(), "application/json")
        if measured is not None:
            judged = model_tests.verdict_of(measured, metadata)
            recorder.info["verdict"] = {
                "status": judged.status,
                "failed_checks": [check.describe() for check in judged.failed],
            }
            if not judged.passed:
                # Recorded as FAILED, with the checks as its reason; the stage itself goes on, so
                # that the evaluate stage judges the exported model and leaves its evidence.
                recorder.fail_after_recording(judged.describe())
        return result, metadata

    tracked = tracked_run(
        body,
        config={**settings.as_dict(), "seed": settings.train.seed},
        info=run_info(lineage),
    )
    return tracked.value


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


def _archive(model_dir: str) -> bytes:
    """The exported model directory (the .keras file, the serving export, metadata) as a .tar.gz."""
    buffer = io.BytesIO()
    with storage.local_dir_for_reading(model_dir) as local, tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(local, arcname="model")
    return buffer.getvalue()
