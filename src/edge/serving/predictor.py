"""Load the exported model and turn request instances into the batch its serving function takes.

Validation happens here, before TensorFlow sees anything, so bad input becomes a clear 400 naming
the instance instead of a TensorFlow error, a 500 or a dead worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.data import IMAGE_SHAPE
from edge.verdict import Status, UnservableModelError, Verdict, refuse_unless_passed, status_of
from edge.verdict import read as read_verdict

PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
IMAGE_FORMATS = ("PNG", "JPEG")
# A 28x28 PNG or JPEG is well under 10 kB; this bounds the work spent on one b64 string.
MAX_B64_CHARS = 64 * 1024


class ModelLoadError(Exception):
    """The model is missing or unusable; the message says which file and why."""


class InstanceError(ValueError):
    """One instance of a request is invalid; `index` says which one."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(f"instances[{index}]: {problem}")
        self.index = index
        self.problem = problem


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    # bool is a subclass of int, but true/false are not pixels.
    return isinstance(value, int | float) and not isinstance(value, bool)


_NUMBER_TYPES = frozenset({int, float})


def _check_numbers(index: int, values: Sequence[Any], where: str) -> None:
    # The common case, all ints or floats, is checked in C; the loop below only names the culprit.
    if set(map(type, values)) <= _NUMBER_TYPES:
        return
    for position, value in enumerate(values):
        if not _is_number(value):
            raise InstanceError(index, f"{where}[{position}] is {_describe(value)}, expected a number 0-255")


def _decode_b64_image(index: int, payload: Any) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not isinstance(payload, str):
        raise InstanceError(index, f"b64 is {_describe(payload)}, expected a base64 string")
    if len(payload) > MAX_B64_CHARS:
        raise InstanceError(index, f"b64 is {len(payload)} characters, more than the {MAX_B64_CHARS} allowed")
    # GNU base64 wraps its output every 76 characters: line breaks carry no data, so they are dropped.
    if "\n" in payload or "\r" in payload:
        payload = payload.replace("\r", "").replace("\n", "")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InstanceError(
            index,
            f"b64 is not valid base64 ({exc}); send standard base64 (A-Z, a-z, 0-9, +, / and = padding), "
            "for example the output of `base64 -w0 image.png`",
        ) from exc
    try:
        # Any pixel-count warning is an error: only a 28x28 image is acceptable anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.format not in IMAGE_FORMATS:
                raise InstanceError(index, f"image format {image.format} is not supported, send PNG or JPEG")
            # The size comes from the header, so an oversized image is refused before decoding.
            if image.size != (IMAGE_SHAPE[1], IMAGE_SHAPE[0]):
                raise InstanceError(
                    index,
                    f"image is {image.size[0]}x{image.size[1]} pixels, expected 28x28 "
                    "(convert it the way Fashion-MNIST was made first, as the webapp does)",
                )
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
    except InstanceError:
        raise
    except UnidentifiedImageError as exc:
        raise InstanceError(index, "b64 does not hold a PNG or JPEG image") from exc
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InstanceError(index, f"b64 is not a decodable PNG or JPEG image ({exc})") from exc
    return pixels


def decode_instance(index: int, instance: Any) -> np.ndarray:
    """Turn one instance into a float32 (28, 28) array of 0-255 pixels, or raise InstanceError."""
    if isinstance(instance, dict):
        if set(instance) != {"b64"}:
            raise InstanceError(
                index, f"an object instance must have exactly one key, b64; got {sorted(instance)}"
            )
        return _decode_b64_image(index, instance["b64"])
    if not isinstance(instance, list):
        raise InstanceError(
            index,
            f"instance is {_describe(instance)}, expected a 28x28 array, "
            'a flat list of 784 numbers or {"b64": ...}',
        )
    if len(instance) == PIXELS and not isinstance(instance[0], list):
        _check_numbers(index, instance, "value")
        array = _to_array(index, instance).reshape(IMAGE_SHAPE)
    elif len(instance) == IMAGE_SHAPE[0]:
        for row_index, row in enumerate(instance):
            if not isinstance(row, list) or len(row) != IMAGE_SHAPE[1]:
                raise InstanceError(
                    index,
                    f"wrong shape: row {row_index} is {_describe(row)}, "
                    f"expected a list of {IMAGE_SHAPE[1]} numbers",
                )
            _check_numbers(index, row, f"row {row_index} value")
        array = _to_array(index, instance)
    else:
        raise InstanceError(
            index,
            f"wrong shape: {_describe(instance)}, expected a 28x28 array or a flat list of 784",
        )
    _check_range(index, array)
    return array.astype(np.float32)


def _to_array(index: int, values: list[Any]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except OverflowError as exc:  # JSON integers have no size limit
        raise InstanceError(index, "a value is far out of range 0-255") from exc


def _check_range(index: int, array: np.ndarray) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        position = int(np.argmin(finite))
        value = array.flat[position]
        kind = "NaN" if math.isnan(value) else "infinite"
        raise InstanceError(index, f"pixel {position} is {kind}, expected a number 0-255")
    outside = (array < 0) | (array > 255)
    if outside.any():
        position = int(np.argmax(outside))
        raise InstanceError(index, f"pixel {position} is {array.flat[position]:g}, out of range 0-255")


def decode_instances(instances: Any, max_instances: int, *, json_text: bytes | None = None) -> np.ndarray:
    """Validate a request's `instances` and stack them into a float32 (N, 28, 28) batch.

    `json_text` is the body the instances were parsed from, if at hand: when it holds no `true` or
    `false`, valid numeric instances are converted in one numpy call instead of checked one by one.
    """
    if not isinstance(instances, list):
        raise ValueError(f"instances is {_describe(instances)}, expected a list")
    if not instances:
        raise ValueError("instances is empty, send at least one")
    if len(instances) > max_instances:
        raise TooManyInstancesError(len(instances), max_instances)
    if json_text is not None and b"true" not in json_text and b"false" not in json_text:
        batch = _numbers_at_once(instances)
        if batch is not None:
            return batch
    return np.stack([decode_instance(i, instance) for i, instance in enumerate(instances)])


def _numbers_at_once(instances: list[Any]) -> np.ndarray | None:
    """Convert instances that are all valid pixel arrays in one go; None if any is not.

    This is the common request, and the server's busiest code: one numpy conversion of the whole
    list costs a third of checking each value's type in Python. numpy turns booleans mixed with
    numbers into numbers, which is why the caller only comes here when the JSON holds none; strings,
    nulls, objects, ragged or wrongly shaped lists give a non-numeric dtype or another shape, and
    whatever is not accepted here goes through `decode_instance`, which says what is wrong.
    """
    try:
        array = np.array(instances)
    except (ValueError, OverflowError):  # ragged lists, or integers too large for any dtype
        return None
    if array.dtype.kind not in "iuf":
        return None
    count = len(instances)
    if array.shape == (count, PIXELS):
        array = array.reshape(count, *IMAGE_SHAPE)
    elif array.shape != (count, *IMAGE_SHAPE):
        return None
    # NaN fails both comparisons; the range is checked before float32 rounds anything into it.
    if not (array.min() >= 0 and array.max() <= 255):
        return None
    return array.astype(np.float32)


class TooManyInstancesError(ValueError):
    """More instances than the server accepts in one request."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} instances in one request, the limit is {limit}")


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


class ModelHolder:
    """The predictor once loaded, or why it is not; shared by the request threads."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.predictor: Predictor | None = None
        self.error: str | None = None

    def set(self, predictor: Predictor) -> None:
        """Publish a loaded predictor."""
        self.predictor = predictor
        self._ready.set()

    def fail(self, message: str) -> None:
        """Record why loading failed."""
        self.error = message

    @property
    def ready(self) -> bool:
        """Tell whether a predictor is loaded."""
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the predictor; return whether it is loaded."""
        return self._ready.wait(timeout)


__all__ = [
    "InstanceError",
    "ModelHolder",
    "ModelLoadError",
    "Prediction",
    "Predictor",
    "TooManyInstancesError",
    "compute_each_call_on_one_thread",
    "decode_instance",
    "decode_instances",
    "load_from_uri",
    "metadata_fingerprint",
]
