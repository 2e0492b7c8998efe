"""The reference profile: what the validation data looks like to the model, saved with the model.

Drift is judged against this profile rather than against the training data, so a report needs
only the model folder and the log. It holds, in the log's own terms: samples of the per-image input
summaries and their pooled intensity histogram, the predicted-class mix, a sample of confidences,
and the penultimate-layer embeddings reduced by PCA (the projection itself, so the server projects
live embeddings the same way, and a sample of projected validation embeddings).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge import storage
from edge.monitoring.summaries import SCALARS, summarize

if TYPE_CHECKING:
    import keras

# Saved in the model folder by `save_model(..., extra_files={PROFILE_FILE: profile.to_json().encode()})`,
# so it is published with the model and covered by its content hash.
PROFILE_FILE = "profile.json"
FORMAT = 1
# Sixteen principal components keep most of a 256-unit layer's variance at 16 numbers per record.
EMBEDDING_DIMS = 16
SUMMARY_SAMPLE = 2_000
EMBEDDING_SAMPLE = 500


@dataclass(frozen=True)
class ReferenceProfile:
    """The validation data summarised as the log summarises live traffic."""

    count: int
    class_names: list[str]
    class_mix: list[float]
    confidence: list[float]
    inputs: dict[str, list[float]]
    intensity_histogram: list[float]
    embedding_mean: list[float]
    embedding_components: list[list[float]]
    embedding_sample: list[list[float]]
    format: int = FORMAT

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """Project penultimate-layer embeddings onto the profile's principal components."""
        mean = np.asarray(self.embedding_mean, dtype=np.float32)
        components = np.asarray(self.embedding_components, dtype=np.float32)
        return (np.asarray(embeddings, dtype=np.float32) - mean) @ components.T

    def to_json(self) -> str:
        """Serialise, rounded: the profile is a sample, its last digits carry nothing."""
        return json.dumps(asdict(self), separators=(",", ":")) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ReferenceProfile:
        """Build from the saved JSON, refusing a format this code does not know."""
        if raw.get("format") != FORMAT:
            raise ValueError(
                f"reference profile format {raw.get('format')!r} is not {FORMAT}; "
                "retrain the model with this version of edge"
            )
        return cls(**raw)


def _rounded(values: np.ndarray, digits: int = 4) -> list[Any]:
    rounded: list[Any] = np.round(np.asarray(values, dtype=np.float64), digits).tolist()
    return rounded


def build_profile(
    images: np.ndarray,
    probabilities: np.ndarray,
    embeddings: np.ndarray,
    class_names: list[str],
    seed: int = 0,
) -> ReferenceProfile:
    """Summarise validation images, the model's probabilities and its penultimate-layer embeddings."""
    rng = np.random.default_rng(seed)
    count = len(images)
    summary = summarize(images)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    mix = np.bincount(predicted, minlength=len(class_names)) / count
    pick = rng.permutation(count)[:SUMMARY_SAMPLE]

    features = np.asarray(embeddings, dtype=np.float64)
    mean = features.mean(axis=0)
    # Principal axes from the SVD of the centred features (numpy's LAPACK, no extra dependency).
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    components = vt[: min(EMBEDDING_DIMS, vt.shape[0])]
    projected = (features - mean) @ components.T
    embedding_pick = rng.permutation(count)[:EMBEDDING_SAMPLE]
    return ReferenceProfile(
        count=count,
        class_names=list(class_names),
        class_mix=_rounded(mix, 6),
        confidence=_rounded(confidence[pick], 5),
        inputs={name: _rounded(summary[name][pick]) for name in SCALARS},
        intensity_histogram=_rounded(summary["histogram"].mean(axis=0), 6),
        embedding_mean=_rounded(mean, 5),
        embedding_components=_rounded(components, 6),
        embedding_sample=_rounded(projected[embedding_pick]),
    )


def compute_profile(model: keras.Model, images: np.ndarray, class_names: list[str]) -> ReferenceProfile:
    """Run `model` over the validation images and build their profile."""
    from edge.model import embedding_model, predict

    batch = np.asarray(images, dtype=np.float32)
    probabilities = predict(model, batch, batch_size=512).astype(np.float64)
    embeddings = predict(embedding_model(model), batch, batch_size=512).astype(np.float32)
    return build_profile(batch, probabilities, embeddings, class_names)


def load_profile(model_dir: str) -> ReferenceProfile:
    """Read the profile saved beside a model; a clear error when the model has none."""
    uri = storage.join(storage.resolve_dir(model_dir), PROFILE_FILE)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{uri} is missing: the model was trained before monitoring existed; retrain it "
            "(edge pipeline train) to get a reference profile"
        ) from None
    try:
        return ReferenceProfile.from_dict(json.loads(text))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{uri} is not a valid reference profile: {exc}") from exc
