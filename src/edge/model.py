"""The Fashion-MNIST classifier: its architecture, its serving export and how to load it back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StrictBool, ValidationInfo, field_validator

from edge import envsettings
from edge.data import CLASS_NAMES, IMAGE_SHAPE

if TYPE_CHECKING:
    import keras
    import numpy as np

KERAS_FILE = "model.keras"
SERVING_DIR = "serving"
METADATA_FILE = "metadata.json"
# When, from which checkout (git commit, branch, uncommitted changes) and in which tracked run or
# Vertex AI job a model was made, written beside it after it is published (`write_run`): facts about
# one run, kept out of the folder's content so that the same inputs make the same bytes, and the md5
# that DVC records for `models` names the model, not the run (committing dvc.lock moves the commit).
RUN_FILE = "run.json"
RUN_FACTS = ("created", "tracking_run_id", "git", "vertex_job")
# The time every entry of a `.keras` archive carries (zip's earliest), whenever it was saved.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
Head = Literal["flatten", "gap"]
LOGITS_LAYER = "logits"
# Keras' default of 0.99 averages over ~100 steps: a run of a few dozen steps (the tests' tiny data)
# would evaluate with statistics that are still mostly the initial ones, at chance level.
BN_MOMENTUM = 0.9
CPUINFO = Path("/proc/cpuinfo")
# CPU flags (as /proc/cpuinfo spells them) of units that compute in bfloat16 natively. Without them
# oneDNN emulates bfloat16 and a training step costs about twice float32's (docs/benchmarks.md).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# The flag `auto` trains in bfloat16 on: AMX, where the default model passed its test suite in
# bfloat16 for every seed measured. With avx512_bf16 alone (an AMD EPYC) a bfloat16 step costs 0.6 of
# float32's, but the models of 2 of 3 seeds failed the suite there, where 4 of 5 passed in float32,
# seed 42 among them: a model that is served is worth the minutes (docs/benchmarks.md).
AUTO_BF16_CPU_FLAG = "amx_bf16"
# oneDNN limited to an instruction set (`ONEDNN_MAX_CPU_ISA`) older than the one a bfloat16 flag
# belongs to does not use that flag's units: these limits rule each flag out. The names and their
# order are oneDNN's (https://oneapi-src.github.io/oneDNN/dev_guide_cpu_dispatcher_control.html);
# any other value (ALL, the AMX sets, or one oneDNN does not know and ignores) leaves both in reach.
_ONEDNN_ISAS_BEFORE_AVX512_BF16 = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"
)  # fmt: skip
ONEDNN_LIMITS_WITHOUT = {
    "avx512_bf16": _ONEDNN_ISAS_BEFORE_AVX512_BF16,
    "amx_bf16": (*_ONEDNN_ISAS_BEFORE_AVX512_BF16, "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16"),
}
Policy = Literal["float32", "mixed_bfloat16", "mixed_float16"]


@dataclass(frozen=True)
class Precision:
    """The compute dtype policy a model is built with, and why it was chosen."""

    setting: bool | str
    policy: Policy
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "policy": self.policy, "reason": self.reason}


def read_cpuinfo() -> str:
    """This machine's /proc/cpuinfo, or "" where there is none (macOS)."""
    return CPUINFO.read_text() if CPUINFO.is_file() else ""


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo's text (empty when it has none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_name(cpuinfo: str) -> str:
    """The model name of the first CPU in /proc/cpuinfo's text ("unknown" when it has none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def machine(cpuinfo: str | None = None) -> dict[str, Any]:
    """The kind of CPU a model is trained on: what decides its exact bits (`edge.train.train`)."""
    import os

    import tensorflow as tf

    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    flags = cpu_flags(cpuinfo) & {"avx2", "avx512f", *BF16_CPU_FLAGS}
    environment = envsettings.environment()
    return {
        "cpu": cpu_name(cpuinfo),
        "flags": sorted(flags),
        "cores": len(os.sched_getaffinity(0)),
        "tensorflow": tf.__version__,
        "onednn": environment.tf_enable_onednn_opts or "default",
        # oneDNN limited to an older instruction set (`ONEDNN_MAX_CPU_ISA=AVX2`) computes as that CPU.
        "onednn_max_cpu_isa": environment.onednn_max_cpu_isa or "all",
    }


def resolve_precision(
    setting: bool | str, *, cpuinfo: str | None = None, gpus: int | None = None
) -> Precision:
    """Choose the compute policy for `train.model.bfloat16` (true, false or "auto") on this machine.

    "auto" is bfloat16 only where the CPU computes it with AMX, float16 with loss scaling on a GPU,
    float32 otherwise (avx512_bf16 alone, older x86, macOS, ARM without the flags): a default never
    runs emulated, nor in bfloat16 where its models failed their test suite (`AUTO_BF16_CPU_FLAG`).
    Native means within oneDNN's reach: limited by `ONEDNN_MAX_CPU_ISA` to an older instruction
    set (AVX2, to compute as a CPU without AVX-512 would), the CPU's bfloat16 units go unused.
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
        cpuinfo = read_cpuinfo()
    found = sorted(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))
    if not found:
        return Precision(setting, "float32", f"auto: the CPU reports none of {', '.join(BF16_CPU_FLAGS)}")
    limit = envsettings.environment().onednn_max_cpu_isa
    usable = [flag for flag in found if (limit or "").upper() not in ONEDNN_LIMITS_WITHOUT[flag]]
    if AUTO_BF16_CPU_FLAG in usable:
        return Precision(setting, "mixed_bfloat16", f"auto: the CPU reports {', '.join(usable)}")
    if usable and AUTO_BF16_CPU_FLAG not in found:
        return Precision(
            setting,
            "float32",
            f"auto: the CPU reports {', '.join(usable)} but not {AUTO_BF16_CPU_FLAG}, where the default "
            "model passes its test suite in float32; train.model.bfloat16: true trains in bfloat16",
        )
    return Precision(
        setting,
        "float32",
        f"auto: the CPU reports {', '.join(found)}, out of oneDNN's reach with ONEDNN_MAX_CPU_ISA={limit}",
    )


class ModelParams(BaseModel):
    """Architecture hyperparameters, the `train.model` block of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # One block per entry: convolutions of that many filters, then 2x2 max pooling.
    filters: tuple[PositiveInt, ...] = Field(default=(16, 32, 64), min_length=1)
    # 3x3 convolutions in each block: one number for every block, or one per block.
    convs_per_block: PositiveInt | tuple[PositiveInt, ...] = 1
    head: Head = "flatten"
    # Standardize each image (zero mean, unit variance) before the first convolution: the network
    # then sees one image at any brightness or contrast, as a photo's exposure should not matter.
    standardize: StrictBool = False
    batch_norm: StrictBool = False
    dense_units: int = Field(default=256, ge=1)
    dropout: float = Field(default=0.15, ge=0, lt=1)
    tta_flip: StrictBool = True
    # true, false or "auto" (resolve_precision): the default must not depend on the CPU it runs on.
    bfloat16: StrictBool | Literal["auto"] = "auto"

    @field_validator("convs_per_block", mode="before")
    @classmethod
    def _a_count_or_one_per_block(cls, value: object, info: ValidationInfo) -> object:
        # Checked here so that a wrong value gets one message, not one per member of the union.
        def count(item: object) -> bool:
            return isinstance(item, int) and not isinstance(item, bool) and item >= 1

        if count(value):
            return value
        filters = info.data.get("filters")
        if isinstance(value, list | tuple) and value and all(count(item) for item in value):
            if filters is not None and len(value) != len(filters):
                raise ValueError(
                    f"has {len(value)} entries for {len(filters)} blocks: give one per entry of filters"
                )
            return tuple(value)
        raise ValueError("must be a whole number >= 1, or one per block, such as [1, 2, 1]")

    def block_convs(self) -> tuple[int, ...]:
        """How many convolutions each block has."""
        if isinstance(self.convs_per_block, tuple):
            return self.convs_per_block
        return (self.convs_per_block,) * len(self.filters)

    @field_validator("bfloat16", mode="before")
    @classmethod
    def _true_false_or_auto(cls, value: object) -> object:
        # Checked here so that a wrong value gets one message, not one per member of the union.
        if value is True or value is False or value == "auto":
            return value
        raise ValueError("must be true, false or auto")


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
    for block, (filters, convs) in enumerate(zip(params.filters, params.block_convs(), strict=True)):
        for conv in range(convs):
            conv_name = f"block{block}_conv{conv}"
            x = layers.Conv2D(
                filters, 3, padding="same", use_bias=not params.batch_norm, name=conv_name, dtype=dtype
            )(x)
            if params.batch_norm:
                x = layers.BatchNormalization(
                    momentum=BN_MOMENTUM, name=f"block{block}_bn{conv}", dtype=dtype
                )(x)
            x = layers.Activation("relu", dtype=dtype)(x)
        # "same" keeps the last row and column of an odd-sized map (7 -> 4, where "valid" gives 3).
        x = layers.MaxPooling2D(padding="same", name=f"block{block}_pool", dtype=dtype)(x)
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


def predict(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`model.predict` over float32 images, in batches of `batch_size`, without Keras's progress bar.

    Fed as a dataset of plain slices: Keras feeds a NumPy array through a parallel map, which
    TensorFlow rewrites to a sequential one under op determinism (training turns it on) and then
    logs an error line for an attribute the rewritten op lacks, harmless but alarming.
    """
    import numpy as np
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices(np.asarray(images, np.float32)).batch(batch_size)
    return np.asarray(model.predict(batches, verbose=0))


def export_serving(model: keras.Model, path: str) -> None:
    """Write the SavedModel the server runs: `serve` (probabilities) and `embed` (for monitoring).

    The same weights give the same bytes: variables are written in the model's own order, and the
    fingerprint's random uuid is cleared (see `_variables_in_model_order`, `_clear_fingerprint_uuid`).
    """
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
    with _variables_in_model_order([model, embedder]):
        archive.write_out(path, verbose=False)
    _clear_fingerprint_uuid(Path(path))


@contextlib.contextmanager
def _variables_in_model_order(models: Sequence[keras.Model]) -> Iterator[None]:
    """While writing a SavedModel, list its variables in the models' order rather than TensorFlow's.

    Keras lists the variables an export uses in the order TensorFlow captured them while tracing,
    which differs from one process to the next; that order numbers the variables in saved_model.pb
    and in the checkpoint, so the same weights would be written as different bytes. Sorting by each
    variable's place in `models` (fixed by the architecture) makes one model one set of bytes. The
    function replaced is private to Keras: if a Keras upgrade drops it, fail here, loudly, rather
    than export models whose bytes change with every run.
    """
    from keras.src.export import saved_model_export_archive as export_module

    listing = getattr(export_module, "_list_variables_used_by_fns", None)
    if listing is None:
        import keras

        raise RuntimeError(
            f"Keras {keras.__version__} has no keras.src.export.saved_model_export_archive."
            "_list_variables_used_by_fns, which edge.model.export_serving reorders so that the same "
            "weights export the same bytes: install the Keras version in uv.lock, or update "
            "_variables_in_model_order for this one"
        )
    rank: dict[int, int] = {}
    for model in models:
        for variable in model.variables:
            # The traced functions capture the backend variable beneath each Keras variable.
            for obj in (variable, getattr(variable, "value", None)):
                rank.setdefault(id(obj), len(rank))

    def key(variable: Any) -> tuple[int, str]:
        return rank.get(id(variable), len(rank)), str(variable.name)

    def ordered(fns: Any) -> tuple[list[Any], list[Any]]:
        trainable, other = listing(fns)
        return sorted(trainable, key=key), sorted(other, key=key)

    export_module._list_variables_used_by_fns = ordered
    try:
        yield
    finally:
        export_module._list_variables_used_by_fns = listing


def _clear_fingerprint_uuid(saved_model: Path) -> None:
    """Empty the random uuid TensorFlow writes into a SavedModel's fingerprint.pb at each save.

    The fingerprint's hashes of the graph and the checkpoint stay: they identify the export by its
    content, which is all the uuid was standing in for.
    """
    from tensorflow.core.protobuf import fingerprint_pb2

    path = saved_model / "fingerprint.pb"
    if not path.is_file():
        return
    fingerprint = fingerprint_pb2.FingerprintDef()
    fingerprint.ParseFromString(path.read_bytes())
    fingerprint.ClearField("uuid")
    path.write_bytes(fingerprint.SerializeToString(deterministic=True))


def save_keras(model: keras.Model, path: str | Path) -> None:
    """Save the model as a `.keras` file whose bytes depend only on the model, not on when or where.

    Keras writes the save time (in metadata.json and in the weights entry's zip header) and, for a
    layer used twice (the network under flip TTA), the layer's `id()` in this process as
    `shared_object_id` in config.json. The archive is rewritten with the same entries, order and
    compression, without the date, every entry dated `ZIP_EPOCH` and the shared ids numbered by first
    appearance: Keras only matches equal ids on load, so the model loads as before.
    """
    target = Path(path)
    model.save(target)
    rewritten = target.with_name(f".{target.name}.rewrite")
    with zipfile.ZipFile(target) as source, zipfile.ZipFile(rewritten, "w") as out:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif entry.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            info = zipfile.ZipInfo(entry.filename, date_time=ZIP_EPOCH)
            info.compress_type = entry.compress_type
            info.external_attr = entry.external_attr
            out.writestr(info, data)
    rewritten.replace(target)


def _renumber_shared_objects(node: Any, numbers: dict[Any, int]) -> Any:
    """A copy of a Keras config with each `shared_object_id` replaced by 1, 2... in order of appearance."""
    if isinstance(node, dict):
        copy = {}
        for name, value in node.items():
            if name == "shared_object_id":
                copy[name] = numbers.setdefault(value, len(numbers) + 1)
            else:
                copy[name] = _renumber_shared_objects(value, numbers)
        return copy
    if isinstance(node, list):
        return [_renumber_shared_objects(item, numbers) for item in node]
    return node


class ModelIntegrityError(ValueError):
    """A model folder that is partial, mixed from several saves or altered; the message says which."""


def content_manifest(folder: str | Path) -> dict[str, Any]:
    """Hash every file of a local model folder but the metadata, the verdict and the run record: per
    file and for the whole. The verdict and the run record are written after the save."""
    from edge.verdict import VERDICT_FILE

    root = Path(folder)
    files = {
        path.relative_to(root).as_posix(): _sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() not in (METADATA_FILE, VERDICT_FILE, RUN_FILE)
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
        save_keras(model, staging / KERAS_FILE)
        export_serving(model, str(staging / SERVING_DIR))
        for name, content in (extra_files or {}).items():
            relative = storage.relative_name(name, "extra_files")
            if relative in (METADATA_FILE, RUN_FILE) or (staging / relative).exists():
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


def write_run(model_dir: str, metadata: Mapping[str, Any], run: Mapping[str, Any]) -> None:
    """Record beside a published model the facts of the run that made it (`RUN_FACTS`), on `gs://` in
    the published version. Not part of the model's content: see `RUN_FILE`."""
    from edge import storage

    record = {"model_version": str(metadata.get("version")), **{key: run.get(key) for key in RUN_FACTS}}
    storage.write_text(
        storage.join(storage.resolve_dir(model_dir), RUN_FILE), json.dumps(record, indent=2) + "\n"
    )


def read_run(model_dir: str | Path, metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run record of the model that `metadata` describes, or None when there is none.

    A record of another version (left beside a model restored with `dvc checkout`, which does not
    track it) is none for this one, and so is an unreadable one: it only informs, nothing depends on it.
    """
    from edge import storage

    try:
        record = json.loads(storage.read_text(storage.join(storage.resolve_dir(str(model_dir)), RUN_FILE)))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("model_version") != str(metadata.get("version")):
        return None
    return record


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
