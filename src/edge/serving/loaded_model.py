"""Load an exported model for serving: check its folder, its verdict and its serving function.

A `Predictor` is one loaded model: its serving function (called once at load as a check), its
metadata, model card and verdict, and the feature extractor monitoring uses.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.data import IMAGE_SHAPE
from edge.verdict import Status, UnservableModelError, Verdict, refuse_unless_passed, status_of
from edge.verdict import read as read_verdict


class ModelLoadError(Exception):
    """The model is missing or unusable; the message says which file and why."""


@dataclass(frozen=True)
class Prediction:
    """One instance's result, in the shape of the response."""

    label: str
    class_id: int
    confidence: float
    probabilities: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object of this prediction."""
        return {
            "label": self.label,
            "class_id": self.class_id,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
        }


class Predictor:
    """The exported serving function of one model, with its metadata."""

    def __init__(
        self,
        serve: Callable[[np.ndarray], np.ndarray],
        metadata: dict[str, Any],
        card: dict[str, str] | None = None,
        embed: Callable[[np.ndarray], np.ndarray] | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        self._serve = serve
        # The test suite's verdict, from the model's folder; None for a model never judged.
        self.verdict = verdict
        # The penultimate layer's features, for drift monitoring; None for an export without them.
        self.embed = embed
        self.metadata = metadata
        self.class_names: tuple[str, ...] = tuple(metadata["class_names"])
        # The model card saved with the model, by file name (edge.modelcard); empty for older models.
        self.card: dict[str, str] = card or {}

    @property
    def name(self) -> str:
        """Return the model's name from its metadata."""
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        """Return the model's version from its metadata."""
        return str(self.metadata["version"])

    @property
    def verdict_status(self) -> Status:
        """passed, failed or unjudged: what the model's test suite said of it."""
        return status_of(self.verdict)

    def model_json(self) -> dict[str, str]:
        """Which model this is, as responses and /health name it."""
        return {"name": self.name, "version": self.version, "verdict": self.verdict_status}

    @classmethod
    def load(cls, model_dir: str, *, allow_failed: bool = False) -> Predictor:
        """Load the serving export and metadata from a local directory, checking them with a call.

        A model that did not pass its test suite is refused unless `allow_failed`.
        """
        from edge import model as edge_model

        root = Path(model_dir)
        if not root.is_dir():
            raise ModelLoadError(f"model directory {model_dir} does not exist")
        # A partial or mixed folder (an interrupted save, files copied over by hand) is refused here,
        # before TensorFlow reads any of it.
        try:
            metadata = edge_model.verify_model_dir(model_dir)
        except edge_model.ModelIntegrityError as exc:
            raise ModelLoadError(str(exc)) from exc
        _check_metadata(metadata, root / edge_model.METADATA_FILE)
        judged = read_verdict(model_dir, metadata)
        if not allow_failed:
            try:
                refuse_unless_passed(model_dir, metadata, judged)
            except UnservableModelError as exc:
                raise ModelLoadError(str(exc)) from exc
        serving = root / edge_model.SERVING_DIR
        if not (serving / "saved_model.pb").is_file():
            raise ModelLoadError(f"{serving} holds no SavedModel (saved_model.pb is missing)")

        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(serving))
            # The concrete function skips tf.function's per-call signature dispatch.
            serve = loaded.serve.get_concrete_function(tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32))
            probe = serve(tf.zeros([1, *IMAGE_SHAPE], tf.float32)).numpy()
            embed = (
                _ServingFunction(
                    loaded.embed.get_concrete_function(tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32)),
                    loaded,
                    tf.constant,
                )
                if hasattr(loaded, "embed")
                else None
            )
        except Exception as exc:  # TensorFlow raises many types for a corrupt export.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{serving} is not a usable serving export: {first_line}") from exc
        if probe.shape != (1, len(metadata["class_names"])):
            raise ModelLoadError(
                f"{serving} returns shape {probe.shape[1:]} per image but metadata lists "
                f"{len(metadata['class_names'])} classes"
            )
        from edge import modelcard

        card = {
            name: (root / name).read_text(encoding="utf-8")
            for name in (modelcard.HTML_FILE, modelcard.MARKDOWN_FILE)
            if (root / name).is_file()
        }
        # A save published while we were reading would have swapped the folder under us.
        if edge_model.read_metadata(model_dir).get("content") != metadata["content"]:
            raise ModelLoadError(f"{model_dir} was replaced by a new save while loading; load it again")
        return cls(_ServingFunction(serve, loaded, tf.constant), metadata, card, embed, judged)

    @property
    def fingerprint(self) -> str:
        """Return a digest of the metadata and the verdict: it changes whenever a new model is
        published, and when a model is judged."""
        return metadata_fingerprint(self.metadata, self.verdict_status)

    def serve(self, batch: np.ndarray) -> np.ndarray:
        """Return the (N, classes) probabilities of a float32 (N, 28, 28) batch."""
        return self._serve(batch)

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        """Run the serving function on a float32 (N, 28, 28) batch."""
        return self.to_predictions(self._serve(batch))

    def to_predictions(self, probabilities: np.ndarray) -> list[Prediction]:
        """Turn rows of probabilities into predictions named with this model's classes."""
        results = []
        for row in probabilities.astype(float).tolist():
            class_id = max(range(len(row)), key=row.__getitem__)
            results.append(
                Prediction(
                    label=self.class_names[class_id],
                    class_id=class_id,
                    confidence=row[class_id],
                    probabilities=dict(zip(self.class_names, row, strict=True)),
                )
            )
        return results


def metadata_fingerprint(metadata: dict[str, Any], verdict: Status) -> str:
    """Return a digest of a model's metadata and verdict, independent of key order and formatting."""
    canonical = json.dumps([metadata, verdict], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _ServingFunction:
    """The concrete serving function, keeping alive the loaded object whose variables it reads."""

    def __init__(self, function: Any, owner: Any, to_tensor: Callable[[np.ndarray], Any]) -> None:
        self._function = function
        self._owner = owner
        self._to_tensor = to_tensor

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._function(self._to_tensor(batch)).numpy())


def _check_metadata(metadata: Any, path: Path) -> None:
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    missing = [key for key in ("name", "version", "class_names") if key not in metadata]
    if missing:
        raise ModelLoadError(f"{path} lacks {', '.join(missing)}")
    names = metadata["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelLoadError(f"{path}: class_names must be a non-empty list of strings")


def compute_each_call_on_one_thread(calls: int = 1) -> bool:
    """Make TensorFlow compute each call on one thread, `calls` calls at once; return False if it is
    too late to say so.

    The server runs one batch per core in its own threads instead. A 28x28 network's operations are
    too small to gain from being split across cores: the split costs thread wake-ups (milliseconds
    each on a busy machine, most of a lone request's time) and about a fifth more CPU per image.
    TensorFlow runs a call's operations in its inter-op pool, so that pool needs one thread per
    batch computed at once: with one, the batches of two inference threads took turns on a single
    core (898-929 against 1,020-1,095 requests/s at concurrency 32 with two).
    It must be called before TensorFlow first runs anything in this process.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(calls)
    except RuntimeError:  # TensorFlow already started, with its own thread pools
        return False
    return True


def load_from_uri(uri: str, *, allow_failed: bool = False) -> Predictor:
    """Load a predictor from a local path or a `gs://` URI (see `Predictor.load`)."""
    from edge import storage

    try:
        with storage.local_dir_for_reading(uri) as local:
            return Predictor.load(local, allow_failed=allow_failed)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"model directory {uri} does not exist") from exc
    except storage.StorageError as exc:
        raise ModelLoadError(str(exc)) from exc
