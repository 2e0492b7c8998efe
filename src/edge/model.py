"""The Fashion-MNIST classifier: its architecture, its serving export and how to load it back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge.data import CLASS_NAMES, IMAGE_SHAPE

if TYPE_CHECKING:
    import keras

KERAS_FILE = "model.keras"
SERVING_DIR = "serving"
METADATA_FILE = "metadata.json"
HEADS = ("flatten", "gap")
LOGITS_LAYER = "logits"
# Keras' default of 0.99 averages over ~100 steps: a run of a few dozen steps (the tests' tiny data)
# would evaluate with statistics that are still mostly the initial ones, at chance level.
BN_MOMENTUM = 0.9
CPUINFO = Path("/proc/cpuinfo")
# CPU flags (as /proc/cpuinfo spells them) of units that compute in bfloat16 natively. Without them
# oneDNN emulates bfloat16 and a training step costs about twice float32's (docs/benchmarks.md).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
Policy = Literal["float32", "mixed_bfloat16", "mixed_float16"]


@dataclass(frozen=True)
class Precision:
    """The compute dtype policy a model is built with, and why it was chosen."""

    setting: bool | str
    policy: Policy
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "policy": self.policy, "reason": self.reason}


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo's text (empty when it has none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def machine(cpuinfo: str | None = None) -> dict[str, Any]:
    """The kind of CPU a model is trained on: what decides its exact bits (`edge.train.train`)."""
    import os

    import tensorflow as tf

    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text() if CPUINFO.is_file() else ""
    name = next(
        (line.partition(":")[2].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        "unknown",
    )
    flags = cpu_flags(cpuinfo) & {"avx2", "avx512f", *BF16_CPU_FLAGS}
    return {
        "cpu": name,
        "flags": sorted(flags),
        "cores": len(os.sched_getaffinity(0)),
        "tensorflow": tf.__version__,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }


def resolve_precision(
    setting: bool | str, *, cpuinfo: str | None = None, gpus: int | None = None
) -> Precision:
    """Choose the compute policy for `train.model.bfloat16` (true, false or "auto") on this machine.

    "auto" is bfloat16 only where the CPU computes it natively, float16 with loss scaling on a GPU,
    float32 otherwise (macOS, older x86, ARM without the flags), so a default never runs emulated.
    `cpuinfo` and `gpus` stand in for /proc/cpuinfo and TensorFlow's GPU list (tests pass them).
    """
    if setting is True:
        return Precision(setting, "mixed_bfloat16", "train.model.bfloat16 is true")
    if setting is False:
        return Precision(setting, "float32", "train.model.bfloat16 is false")
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        return Precision(setting, "mixed_float16", f"auto: {gpus} GPU(s), float16 with loss scaling")
    if cpuinfo is None:
        cpuinfo = CPUINFO.read_text() if CPUINFO.is_file() else ""
    found = sorted(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))
    if found:
        return Precision(setting, "mixed_bfloat16", f"auto: the CPU reports {', '.join(found)}")
    return Precision(setting, "float32", f"auto: the CPU reports none of {', '.join(BF16_CPU_FLAGS)}")


@dataclass(frozen=True)
class ModelParams:
    """Architecture hyperparameters, the `model` block of params.yaml."""

    filters: tuple[int, ...] = (16, 32, 64)
    convs_per_block: int = 1
    head: str = "flatten"
    # Standardize each image (zero mean, unit variance) before the first convolution: the network
    # then sees one image at any brightness or contrast, as a photo's exposure should not matter.
    standardize: bool = False
    batch_norm: bool = False
    dense_units: int = 256
    dropout: float = 0.15
    tta_flip: bool = True
    # true, false or "auto" (resolve_precision): the default must not depend on the CPU it runs on.
    bfloat16: bool | str = "auto"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelParams:
        """Build from a params.yaml block, rejecting unknown keys and values out of range."""
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model parameter(s) {sorted(unknown)} in params.yaml")
        values = dict(raw)
        if "filters" in values:
            values["filters"] = tuple(int(f) for f in values["filters"])
        params = cls(**values)
        if not params.filters or min(params.filters) < 1 or params.convs_per_block < 1:
            raise ValueError(
                "train.model.filters and train.model.convs_per_block must be positive in params.yaml"
            )
        if params.head not in HEADS:
            raise ValueError(f"train.model.head is {params.head!r} in params.yaml, expected one of {HEADS}")
        if not 0 <= params.dropout < 1:
            raise ValueError("train.model.dropout must be in [0, 1) in params.yaml")
        if params.bfloat16 not in (True, False, "auto"):
            raise ValueError(
                f"train.model.bfloat16 is {params.bfloat16!r} in params.yaml, expected true, false or auto"
            )
        return params


def build_model(params: ModelParams, precision: Precision | None = None) -> keras.Model:
    """Build the CNN; it takes raw 0-255 pixels of shape (28, 28) and returns class probabilities.

    Its last two layers are `logits` and their softmax, so calibration can rescale the logits.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="image")
    # Reduced-precision compute with float32 weights, where the hardware runs it natively. The output
    # layers stay float32, so the softmax, the loss and the serving signature are float32 either way.
    dtype = (precision or resolve_precision(params.bfloat16)).policy
    x = layers.Rescaling(1.0 / 255.0, dtype=dtype)(inputs)
    if params.standardize:
        # A built-in layer (no custom objects in the .keras file): per image, over its pixels. Its
        # epsilon is far under any real image's variance, so a faint image is not treated apart.
        x = layers.LayerNormalization(
            axis=[1, 2], epsilon=1e-6, center=False, scale=False, name="standardize", dtype=dtype
        )(x)
    x = layers.Reshape((*IMAGE_SHAPE, 1), dtype=dtype)(x)
    for block, filters in enumerate(params.filters):
        for conv in range(params.convs_per_block):
            conv_name = f"block{block}_conv{conv}"
            x = layers.Conv2D(
                filters, 3, padding="same", use_bias=not params.batch_norm, name=conv_name, dtype=dtype
            )(x)
            if params.batch_norm:
                x = layers.BatchNormalization(
                    momentum=BN_MOMENTUM, name=f"block{block}_bn{conv}", dtype=dtype
                )(x)
            x = layers.Activation("relu", dtype=dtype)(x)
        x = layers.MaxPooling2D(name=f"block{block}_pool", dtype=dtype)(x)
    # Flatten keeps where a feature is (a collar at the top, a heel at the bottom), which the small
    # final maps still resolve; GAP is cheaper in parameters but loses it.
    x = (
        layers.Flatten(dtype=dtype)(x)
        if params.head == "flatten"
        else layers.GlobalAveragePooling2D(dtype=dtype)(x)
    )
    x = layers.Dropout(params.dropout, dtype=dtype)(x)
    x = layers.Dense(params.dense_units, activation="relu", dtype=dtype)(x)
    x = layers.Dropout(params.dropout, dtype=dtype)(x)
    logits = layers.Dense(len(CLASS_NAMES), name=LOGITS_LAYER, dtype="float32")(x)
    outputs = layers.Activation("softmax", name="probabilities", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name="fashion_mnist_cnn")


def logits_model(base: keras.Model) -> keras.Model:
    """The same network up to its logits (shared weights), for fitting a temperature."""
    import keras

    return keras.Model(base.input, base.get_layer(LOGITS_LAYER).output, name=f"{base.name}_logits")


def with_temperature(base: keras.Model, temperature: float) -> keras.Model:
    """Wrap `base` so that it returns softmax(logits / temperature): calibrated probabilities.

    Built from Keras layers only (a Rescaling), so the `.keras` file needs no custom objects.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="image")
    scaled = layers.Rescaling(1.0 / temperature, name="temperature", dtype="float32")(
        logits_model(base)(inputs)
    )
    outputs = layers.Activation("softmax", name="probabilities", dtype="float32")(scaled)
    return keras.Model(inputs, outputs, name=f"{base.name}_calibrated")


def with_flip_tta(base: keras.Model) -> keras.Model:
    """Wrap `base` so that it averages its probabilities for each image and its left-right mirror."""
    import keras
    import numpy as np
    from keras import layers

    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="image")
    # A fixed anti-diagonal matrix applied along the last axis reverses each row exactly: a built-in
    # layer, so the .keras file loads without custom objects and the serving export stays plain.
    mirror = layers.Dense(IMAGE_SHAPE[1], use_bias=False, trainable=False, name="mirror")
    mirrored = mirror(inputs)
    mirror.set_weights([np.eye(IMAGE_SHAPE[1], dtype=np.float32)[::-1]])
    outputs = layers.Average(name="probabilities")([base(inputs), base(mirrored)])
    return keras.Model(inputs, outputs, name=f"{base.name}_flip_tta")


def embedding_model(model: keras.Model) -> keras.Model:
    """Cut the network before its output layer: the features the classifier sees of an image."""
    import keras

    # With flip TTA and a temperature the trained network is nested inside the wrappers (the mirror
    # is a Dense layer of the outer one): look in the innermost model; the unflipped pass is enough.
    def network(outer: keras.Model) -> keras.Model:
        inner = next((layer for layer in outer.layers if isinstance(layer, keras.Model)), None)
        return network(inner) if inner is not None else outer

    base = network(model)
    output_layer = [layer for layer in base.layers if isinstance(layer, keras.layers.Dense)][-1]
    return keras.Model(base.inputs, output_layer.input, name="embedding")


def export_serving(model: keras.Model, path: str) -> None:
    """Write the SavedModel the server runs: `serve` (probabilities) and `embed` (for monitoring)."""
    import keras
    import tensorflow as tf

    embedder = embedding_model(model)
    spec = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="image")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(embedder)
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[spec])
    # bfloat16 features become float32 here, so the server sees one dtype whatever the policy.
    archive.add_endpoint(
        "embed", lambda x: tf.cast(embedder(x, training=False), tf.float32), input_signature=[spec]
    )
    archive.write_out(path, verbose=False)


class ModelIntegrityError(ValueError):
    """A model folder that is partial, mixed from several saves or altered; the message says which."""


def content_manifest(folder: str | Path) -> dict[str, Any]:
    """Hash every file of a local model folder but the metadata and the verdict: per file and for the
    whole. The verdict is written after the save, by the stage that judges the model."""
    from edge.verdict import VERDICT_FILE

    root = Path(folder)
    files = {
        path.relative_to(root).as_posix(): _sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() not in (METADATA_FILE, VERDICT_FILE)
    }
    whole = hashlib.sha256("".join(f"{name}\0{digest}\n" for name, digest in files.items()).encode())
    return {"algorithm": "sha256", "sha256": whole.hexdigest(), "files": files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(
    model: keras.Model,
    model_dir: str,
    metadata: dict[str, Any],
    *,
    extra_files: Mapping[str, bytes] | None = None,
    stage: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Publish the `.keras` file, the serving export and the metadata as one folder, atomically.

    Everything is staged complete in a temporary folder and published in one step
    (`storage.publish_dir`: one rename locally, a version prefix and a pointer on `gs://`), so
    `model_dir` holds the previous model or this one, never a mix. `metadata.json` is written last
    and names a content hash of every other file (`content`), which `verify_model_dir` checks.

    Other parts of the model folder join the same publish: `extra_files` maps relative names (such as
    `"model_card.md"` or `"reference/profile.json"`) to their bytes; `stage` is called with the
    staging folder (a local `Path`) after the model and extra files are written, for parts that are
    easier to write as files. Both end up covered by the content hash. Returns the metadata written.
    """
    from edge import storage

    with storage.publish_dir(model_dir) as staging_dir:
        staging = Path(staging_dir)
        model.save(staging / KERAS_FILE)
        export_serving(model, str(staging / SERVING_DIR))
        for name, content in (extra_files or {}).items():
            relative = storage.relative_name(name, "extra_files")
            if relative == METADATA_FILE or (staging / relative).exists():
                raise ValueError(f"extra file {name!r} would overwrite a part of the model folder")
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(content)
        if stage is not None:
            stage(staging)
        written = {**metadata, "content": content_manifest(staging)}
        # Last: the metadata is what says the folder is complete.
        (staging / METADATA_FILE).write_text(json.dumps(written, indent=2) + "\n")
    return written


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """Read the metadata written beside a saved model (on `gs://`, of the published version)."""
    from edge import storage

    folder = storage.resolve_dir(str(model_dir))
    loaded: dict[str, Any] = json.loads(storage.read_text(storage.join(folder, METADATA_FILE)))
    return loaded


def verify_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """Check that a local model folder is complete and from one save; return its metadata.

    Raises `ModelIntegrityError` naming what is wrong when the metadata is missing, names no content
    hash, or when any file is missing, extra or different from what the metadata was written with.
    """
    root = Path(model_dir)
    fix = f"retrain (`edge pipeline train`) or restore a saved version (`dvc checkout {root}`)"
    if not root.is_dir():
        raise ModelIntegrityError(f"model folder {root} does not exist")
    try:
        metadata = json.loads((root / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise ModelIntegrityError(
            f"{root} has no {METADATA_FILE}: the save was interrupted or this is not a model; {fix}"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(f"{root / METADATA_FILE} is not valid JSON ({exc}); {fix}") from exc
    expected = metadata.get("content") if isinstance(metadata, dict) else None
    if not isinstance(expected, dict) or not isinstance(expected.get("files"), dict):
        raise ModelIntegrityError(
            f"{root / METADATA_FILE} names no content hash of the model's files (saved by an older "
            f"version, or not by edge), so the folder cannot be checked; {fix}"
        )
    actual = content_manifest(root)
    if actual["sha256"] != expected.get("sha256") or actual["files"] != expected["files"]:
        names = set(actual["files"]) | set(expected["files"])
        differing = sorted(n for n in names if actual["files"].get(n) != expected["files"].get(n))
        shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
        raise ModelIntegrityError(
            f"{root} is partial or mixed from several saves: {shown or 'the content hash'} "
            f"differ(s) from what {METADATA_FILE} (version {metadata.get('version')}) was written with; {fix}"
        )
    loaded: dict[str, Any] = metadata
    return loaded


def verify_model_uri(model_dir: str) -> dict[str, Any]:
    """Check a local or `gs://` model folder as `verify_model_dir` does; return its metadata."""
    from edge import storage

    with storage.local_dir_for_reading(model_dir) as local:
        return verify_model_dir(local)
