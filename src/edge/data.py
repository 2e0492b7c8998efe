"""Fashion-MNIST: the canonical files, their IDX format, seeding them into the repository, splitting.

Raw files are stored decompressed, so their DVC hashes (the data version) depend only on content,
whether they came from the upstream mirror or from Debian's package with its different gzip headers.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge import envsettings

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SHAPE = (28, 28)

# Upstream first, then the copy Keras downloads from; both serve byte-identical files.
DEFAULT_MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
)
SYSTEM_SOURCE = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
DEFAULT_RAW_DIR = Path("data/raw/fashion-mnist")


@dataclass(frozen=True)
class RawFile:
    """One canonical file: its name without `.gz` and the md5 of its decompressed IDX bytes."""

    name: str
    md5: str

    @property
    def gz_name(self) -> str:
        return f"{self.name}.gz"


RAW_FILES: tuple[RawFile, ...] = (
    RawFile("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    RawFile("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9"),
    RawFile("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a"),
    RawFile("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965"),
)


class DataError(Exception):
    """Data that is missing, corrupt or not what the pipeline expects; the message says which."""


# --- IDX format -------------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (unsigned-byte data) into an array, checking the header against the size."""
    if len(raw) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or not 1 <= ndim <= 3:
        raise DataError(
            f"{name}: wrong magic number 0x{raw[:4].hex()}, expected 0x000008NN "
            "(unsigned bytes, 1 to 3 dimensions)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{name}: truncated or padded, header says shape {shape} ({expected} bytes) "
            f"but the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (`.gz`) or not."""
    from edge import storage

    raw = storage.read_bytes(str(path))
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc})") from exc
    return parse_idx(raw, str(path))


def load_split(raw_dir: str | Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Read images and labels of `kind` ("train" or "t10k"), checking they belong together."""
    from edge import storage

    base = str(raw_dir)
    images = read_idx(storage.join(base, f"{kind}-images-idx3-ubyte"))
    labels = read_idx(storage.join(base, f"{kind}-labels-idx1-ubyte"))
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{kind} images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DataError(f"{kind} labels have shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise DataError(f"{kind}: {len(images)} images but {len(labels)} labels; the files differ")
    return images, labels


# --- Seeding ---------------------------------------------------------------------------------

Progress = Callable[[str, int, int | None], None]
"""Called as progress(file name, bytes done, bytes total or None)."""


@dataclass(frozen=True)
class SeedResult:
    """What seeding did: the files it wrote (empty when everything was already there)."""

    raw_dir: Path | str
    written: tuple[str, ...]
    source: str


def md5_hex(data: bytes) -> str:
    """Return the md5 of `data` as hex (a checksum, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def present_files(raw_dir: Path | str, files: Sequence[RawFile] = RAW_FILES) -> list[RawFile]:
    """Return the files already in `raw_dir` (a local path or a `gs://` URI) with the right content."""
    from edge import storage

    return [f for f in files if _has_content(storage.join(str(raw_dir), f.name), f.md5)]


def _has_content(uri: str, md5: str) -> bool:
    from edge import storage

    return storage.exists(uri) and md5_hex(storage.read_bytes(uri)) == md5


def _verified_content(compressed: bytes, file: RawFile, origin: str) -> bytes:
    """Decompress and check a downloaded or copied file; raise naming it when it is wrong."""
    try:
        content = gzip.decompress(compressed) if compressed[:2] == b"\x1f\x8b" else compressed
    except (OSError, EOFError) as exc:
        raise DataError(f"{file.gz_name} from {origin}: corrupt or truncated gzip data ({exc})") from exc
    actual = md5_hex(content)
    if actual != file.md5:
        raise DataError(
            f"{file.gz_name} from {origin}: checksum mismatch, expected md5 {file.md5} "
            f"of the decompressed content, got {actual}"
        )
    return content


def resolve_source(source: str | None, system_source: Path | None = None) -> str | None:
    """Pick the local folder to copy from: the flag, then `EDGE_DATA_SOURCE`, then Debian's copy."""
    chosen = source or envsettings.environment().data_source
    if chosen:
        if not Path(chosen).is_dir():
            raise DataError(f"data source {chosen} is not a directory (from --source or EDGE_DATA_SOURCE)")
        return chosen
    system_source = system_source or SYSTEM_SOURCE
    if system_source.is_dir():
        return str(system_source)
    return None


def _read_from_folder(folder: Path, file: RawFile) -> bytes:
    for candidate in (folder / file.gz_name, folder / file.name):
        if candidate.is_file():
            return candidate.read_bytes()
    raise DataError(f"{file.gz_name} is not in {folder} (nor its decompressed {file.name})")


def download(
    url: str,
    *,
    attempts: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> bytes:
    """Download `url` whole, retrying with exponential backoff on network errors."""
    name = url.rsplit("/", 1)[-1]
    last_error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.length
                chunks: list[bytes] = []
                done = 0
                while chunk := response.read(1 << 16):
                    chunks.append(chunk)
                    done += len(chunk)
                    if progress:
                        progress(name, done, total)
                if total is not None and done != total:
                    raise urllib.error.ContentTooShortError(
                        f"got {done} of {total} bytes",
                        None,  # type: ignore[arg-type]
                    )
                return b"".join(chunks)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            last_error = exc
        except (urllib.error.URLError, OSError, EOFError) as exc:
            last_error = exc
    raise DataError(f"{url}: failed after {attempts} attempts ({last_error})")


def seed(
    raw_dir: Path | str = DEFAULT_RAW_DIR,
    *,
    source: str | None = None,
    mirrors: Sequence[str] | None = None,
    system_source: Path | None = None,
    attempts: int = 3,
    backoff: float = 1.0,
    progress: Progress | None = None,
    files: Sequence[RawFile] = RAW_FILES,
    download: bool = False,
) -> SeedResult:
    """Put the four canonical files into `raw_dir` (a local path or a `gs://` URI), each checked by content.

    Copies from a local folder when one is given or found, otherwise downloads from the mirrors.
    Files are staged in a temporary folder (locally: beside `raw_dir`; for a bucket: in the system's
    temporary folder), named so that a later seed sweeps it away if this one is killed, and moved in
    only once all of them passed their checksum, each file whole (a rename, or one object upload),
    so a failure leaves `raw_dir` as it was and a kill at worst leaves some complete files, which
    the next seed keeps.
    """
    from edge import storage

    location = str(raw_dir)
    remote = storage.is_remote(location)
    present = present_files(location, files)
    missing = [f for f in files if f not in present]
    # `download` skips Debian's copy (not a source named on purpose): to test or refresh the mirrors.
    folder = source if download and source else None if download else resolve_source(source, system_source)
    origin = folder or "the download mirrors"
    if not missing:
        return SeedResult(raw_dir, (), origin)
    changed = [f.name for f in missing if storage.exists(storage.join(location, f.name))]
    if changed:
        # Somebody's data, perhaps a new version under DVC: never overwrite it.
        raise DataError(
            f"{', '.join(changed)} in {raw_dir} differ from the canonical Fashion-MNIST files; "
            "restore the tracked version with `dvc checkout`, or delete them to seed again"
        )
    if mirrors is None:
        mirrors = envsettings.environment().data_mirrors or DEFAULT_MIRRORS

    def fetch(file: RawFile) -> bytes:
        if folder:
            return _verified_content(_read_from_folder(Path(folder), file), file, folder)
        return _fetch_from_mirrors(file, mirrors, attempts, backoff, progress)

    if remote:
        with storage.local_scratch("seed") as staging:
            for file in missing:
                (staging / file.name).write_bytes(fetch(file))
            for file in missing:
                storage.write_bytes(storage.join(location, file.name), (staging / file.name).read_bytes())
        return SeedResult(raw_dir, tuple(f.name for f in missing), origin)
    staging = storage.temporary_sibling(Path(location))
    try:
        for file in missing:
            (staging / file.name).write_bytes(fetch(file))
        Path(location).mkdir(parents=True, exist_ok=True)
        for file in missing:
            (staging / file.name).replace(Path(location, file.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SeedResult(raw_dir, tuple(f.name for f in missing), origin)


def _fetch_from_mirrors(
    file: RawFile,
    mirrors: Iterable[str],
    attempts: int,
    backoff: float,
    progress: Progress | None,
) -> bytes:
    errors: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file.gz_name
        try:
            compressed = download(url, attempts=attempts, backoff=backoff, progress=progress)
            return _verified_content(compressed, file, url)
        except DataError as exc:
            errors.append(str(exc))
    raise DataError(
        f"could not download {file.gz_name}: " + "; ".join(errors) + ". Without network access, "
        "pass --source DIR or set EDGE_DATA_SOURCE to a folder holding the Fashion-MNIST files "
        "(Debian's dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist)"
    )


# --- Preparing splits ------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Images (N, 28, 28) uint8 and labels (N,) uint8."""

    images: np.ndarray
    labels: np.ndarray


def check_split(name: str, split: Split, num_classes: int = len(CLASS_NAMES)) -> dict[str, int]:
    """Check shapes, dtypes, label range and class balance; return the per-class counts."""
    images, labels = split.images, split.labels
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{name}: dtypes {images.dtype}/{labels.dtype}, expected uint8/uint8")
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{name}: images have shape {images.shape}, expected (N, 28, 28)")
    if labels.shape != (len(images),):
        raise DataError(f"{name}: {len(images)} images but labels of shape {labels.shape}")
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{name}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    counts = np.bincount(labels, minlength=num_classes)
    missing = [CLASS_NAMES[i] for i, c in enumerate(counts) if c == 0]
    if missing:
        raise DataError(f"{name}: no examples of class(es) {', '.join(missing)}")
    # Fashion-MNIST is balanced; a subset or split far from it means something went wrong.
    if counts.min() < 0.5 * counts.mean():
        raise DataError(
            f"{name}: classes are unbalanced, counts {counts.tolist()} (the smallest is under half the mean)"
        )
    return {CLASS_NAMES[i]: int(c) for i, c in enumerate(counts)}


def split_train_validation(train: Split, validation_size: int, seed: int) -> tuple[Split, Split]:
    """Split off a stratified validation set, the same for the same seed."""
    if not 0 < validation_size < len(train.labels):
        raise DataError(
            f"validation_size {validation_size} must be between 1 and {len(train.labels) - 1} "
            "(prepare.validation_size in params.yaml)"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train.labels))
    # Stratify: take validation examples class by class, in proportion to each class's share.
    val_idx: list[np.ndarray] = []
    for cls in range(len(CLASS_NAMES)):
        members = order[train.labels[order] == cls]
        share = round(validation_size * len(members) / len(train.labels))
        val_idx.append(members[:share])
    validation = np.sort(np.concatenate(val_idx))
    mask = np.ones(len(train.labels), dtype=bool)
    mask[validation] = False
    training = order[mask[order]]
    return (
        Split(train.images[training], train.labels[training]),
        Split(train.images[validation], train.labels[validation]),
    )


def subsample(split: Split, limit: int | None, seed: int) -> Split:
    """Keep a stratified random `limit` examples (for quick runs), or everything when None."""
    if limit is None or limit >= len(split.labels):
        return split
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.labels))
    per_class = max(1, limit // len(CLASS_NAMES))
    keep = np.sort(
        np.concatenate([order[split.labels[order] == cls][:per_class] for cls in range(len(CLASS_NAMES))])
    )
    return Split(split.images[keep], split.labels[keep])
