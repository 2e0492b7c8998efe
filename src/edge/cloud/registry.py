"""The Vertex AI Model Registry: every trained model is a version of one parent model.

`register` uploads the exported model to the bucket (`gs://<bucket>/models/<model version>/`) and
registers it as a new version of `MODEL_ID`, served by the trainer image (by digest) running
`edge serve` on Vertex AI's routes and port. Labels carry the lineage (git commit, data version,
params hash, tracking run id, image digest, the model's own version), so the registry entry, the
tracked run and `models/metadata.json` point at each other. Aliases name the roles: `candidate`
(registered, not yet released), `production` (what the endpoint serves), `previous` (what a
rollback returns to). Registering the same model twice returns the existing version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge import storage, verdict
from edge.cloud.clients import Clients
from edge.cloud.errors import CloudError, explain, is_registry_answer

MODEL_ID = "edge-fashion-mnist"
DISPLAY_NAME = "fashion-mnist-cnn"
CANDIDATE, PRODUCTION, PREVIOUS = "candidate", "production", "previous"
# The serving container: the trainer image's own entry point, on the routes `edge serve` answers.
SERVE_COMMAND = ["edge", "serve"]
PREDICT_ROUTE, HEALTH_ROUTE, SERVING_PORT = "/predict", "/health", 8080
LABEL_MAX = 63

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ModelVersion:
    """One version of the registered model, as the registry describes it."""

    resource_name: str  # projects/P/locations/L/models/ID (unversioned)
    version_id: str
    aliases: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    artifact_uri: str = ""
    image_uri: str = ""

    @property
    def versioned_name(self) -> str:
        return f"{self.resource_name}@{self.version_id}"

    @classmethod
    def of(cls, model: Any) -> ModelVersion:
        """Read an aiplatform.Model (its cached resource: no extra request)."""
        resource = model.gca_resource
        return cls(
            resource_name=model.resource_name,
            version_id=str(resource.version_id),
            aliases=tuple(resource.version_aliases),
            labels=dict(resource.labels),
            artifact_uri=str(resource.artifact_uri),
            image_uri=str(resource.container_spec.image_uri),
        )


def lineage_labels(metadata: Mapping[str, Any], image_uri: str) -> dict[str, str]:
    """The lineage of a model as registry labels (lowercase, digits, `-` and `_`, 63 characters).

    `metadata` is the model's metadata.json with its run record (`edge.model.read_run`) under "run".
    """
    lineage = metadata.get("lineage") or {}
    # Models saved before the run record existed kept these facts in their lineage.
    run = metadata.get("run") or {k: lineage.get(k) for k in ("git", "tracking_run_id", "vertex_job")}
    git = run.get("git") or {}
    data = lineage.get("data_version") or {}
    raw = next((v for k, v in sorted(data.items()) if "raw" in k), None) or next(iter(data.values()), None)
    params = lineage.get("params")
    labels = {
        "model_version": metadata.get("version"),
        "git_commit": git.get("commit"),
        "git_dirty": "true" if git.get("dirty") else None,
        "data_version": raw,
        "params_hash": params_hash(params) if params else None,
        "run_id": run.get("tracking_run_id"),
        # The full digest is in the image URI; a label value holds 63 characters.
        "image_digest": image_uri.split("@sha256:", 1)[1][:32] if "@sha256:" in image_uri else None,
        "vertex_job": run.get("vertex_job"),
        "managed_by": "edge",
    }
    return {k: _label_value(str(v)) for k, v in labels.items() if v}


def params_hash(params: Any) -> str:
    """A short hash of the experiment settings, stable across key order."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _label_value(value: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in value.lower())
    return cleaned[:LABEL_MAX]


def check_image(image_uri: str, service: str = "trainer", doing: str = "register") -> str:
    """Refuse an image named by tag: a tag can move, a digest names exactly what was tested."""
    if "@sha256:" not in image_uri:
        raise CloudError(
            f"{image_uri!r} is not an image by digest: {doing} the image `edge image push {service}` "
            f"printed, REGISTRY/edge-{service}@sha256:<digest>"
        )
    return image_uri


class Registry:
    """The registered model's versions and aliases, through the Vertex AI SDK."""

    def __init__(self, clients: Clients, progress: Progress = lambda _m: None) -> None:
        self.clients = clients
        self.progress = progress
        settings = clients.settings
        self.parent = f"projects/{settings.project}/locations/{settings.region}/models/{MODEL_ID}"

    def _aiplatform(self) -> Any:
        return self.clients.aiplatform()

    def get(self, version: str) -> ModelVersion | None:
        """The version with this id or alias, or None when there is none (or no model at all)."""
        aiplatform = self._aiplatform()
        from google.api_core import exceptions

        try:
            return ModelVersion.of(aiplatform.Model(self.parent, version=version))
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, f"reading model version {version}") from exc

    def production(self) -> ModelVersion | None:
        """The version aliased `production`, or None when the registry answered that there is none.

        Fails closed, for the release gate: None only on the registry's own NOT_FOUND for the
        parent model (nothing registered yet) or for its `production` alias; any other error
        (a wrong project or endpoint, a permission, a disabled API) raises CloudError.
        """
        aiplatform = self._aiplatform()
        from google.api_core import exceptions

        for version, doing in ((None, "reading the registered model"), (PRODUCTION, "reading production")):
            try:
                model = aiplatform.Model(self.parent, version=version)
            except exceptions.NotFound as exc:
                if is_registry_answer(exc):
                    return None
                raise CloudError(
                    f"{doing} failed: {self.parent} answered 404 without saying the model does not "
                    "exist (no Vertex AI API at that address?): check `region` and the endpoint "
                    "settings (`edge config show`)"
                ) from exc
            except exceptions.GoogleAPICallError as exc:
                raise explain(exc, doing) from exc
        return ModelVersion.of(model)

    def find_by_model_version(self, model_version: str) -> ModelVersion | None:
        """The registry version holding the model whose weights digest is `model_version`."""
        aiplatform = self._aiplatform()
        from google.api_core import exceptions

        registry = aiplatform.models.ModelRegistry(self.parent)
        try:
            found = registry.list_versions(filter=f'labels.model_version="{_label_value(model_version)}"')
        except exceptions.NotFound:
            return None
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, "listing model versions") from exc
        return self.get(str(found[-1].version_id)) if found else None

    def register(
        self, model_dir: str, image_uri: str, aliases: tuple[str, ...] = (CANDIDATE,)
    ) -> ModelVersion:
        """Upload `model_dir` (local or gs://) and register it as a new version; idempotent."""
        from edge.model import read_metadata, read_run

        check_image(image_uri)
        metadata = read_metadata(model_dir)
        metadata["run"] = read_run(model_dir, metadata)  # commit, run and job that made it: labels
        version = str(metadata.get("version") or "")
        if not version:
            raise CloudError(
                f"{model_dir}/metadata.json names no model version: train it with `edge pipeline`"
            )
        # The registry holds only models that passed their test suite: what it serves, Vertex AI
        # serves, and the model server on the endpoint checks the same verdict again.
        judged = verdict.read(model_dir, metadata)
        if judged is None or not judged.passed:
            what = judged.describe() if judged else f"model {version} has not been judged by its test suite"
            raise CloudError(
                f"{what}: only a model that passed is registered; judge it with `edge pipeline "
                f"evaluate --model-dir {model_dir}` (or `dvc repro`), or train another"
            )
        existing = self.find_by_model_version(version)
        if existing is not None:
            self.progress(f"Model {version} is already registered as version {existing.version_id}.")
            self.move_aliases(existing, aliases)
            return self.get(existing.version_id) or existing
        artifact = self.publish_artifact(model_dir, version)
        aiplatform = self._aiplatform()
        from google.api_core import exceptions

        parent_exists = self.get("default") is not None
        self.progress(
            f"Registering model {version} from {artifact} as "
            + ("a new version of " if parent_exists else "the first version of ")
            + MODEL_ID
        )
        try:
            model = aiplatform.Model.upload(
                display_name=DISPLAY_NAME,
                artifact_uri=artifact,
                serving_container_image_uri=image_uri,
                serving_container_command=SERVE_COMMAND,
                serving_container_predict_route=PREDICT_ROUTE,
                serving_container_health_route=HEALTH_ROUTE,
                serving_container_ports=[SERVING_PORT],
                # The endpoint's prediction log lands under the bucket, where `edge monitor report
                # --source` reads it (docs/monitoring.md).
                serving_container_environment_variables={"EDGE_MONITOR_LOG": self.prediction_log_uri},
                labels=lineage_labels(metadata, image_uri),
                description=f"{metadata.get('name', DISPLAY_NAME)} {version}",
                parent_model=self.parent if parent_exists else None,
                model_id=None if parent_exists else MODEL_ID,
                # The first version is the default one (the service insists); later ones become
                # default only when promoted.
                is_default_version=not parent_exists,
                version_aliases=list(aliases),
                sync=True,
            )
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, "registering the model") from exc
        return ModelVersion.of(model)

    @property
    def prediction_log_uri(self) -> str:
        """Where the model server on a Vertex endpoint writes its prediction log."""
        return f"{self.clients.settings.bucket_uri}/predictions"

    def publish_artifact(self, model_dir: str, version: str) -> str:
        """Where Vertex AI reads the model from: `models/<version>` in the bucket, copied there first.

        A registered version is redeployed and rolled back to for as long as it is kept, so its
        artifact must outlive where it was trained: a job's output under staging/ is deleted by the
        bucket's lifecycle rule after 7 days.
        """
        target = f"{self.clients.settings.bucket_uri}/models/{version}"
        if model_dir.rstrip("/") == target:
            return target
        if storage.is_remote(model_dir):
            self.progress(f"Copying {model_dir} to {target}, where it is kept")
            with storage.local_dir_for_reading(model_dir) as local:
                storage.upload_tree(local, target)
            return target
        self.progress(f"Uploading {model_dir} to {target}")
        storage.upload_tree(model_dir, target)
        return target

    def remove_aliases(self, version: ModelVersion, aliases: tuple[str, ...]) -> None:
        """Take `aliases` away from `version` where it has them (`default` cannot be removed)."""
        present = [a for a in aliases if a in version.aliases]
        if not present:
            return
        aiplatform = self._aiplatform()
        from google.api_core import exceptions

        try:
            aiplatform.models.ModelRegistry(self.parent).remove_version_aliases(present, version.version_id)
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, f"removing aliases {present} from version {version.version_id}") from exc

    def move_aliases(self, version: ModelVersion, aliases: tuple[str, ...]) -> None:
        """Give `aliases` to `version` (the registry takes them from whichever version had them)."""
        missing = [a for a in aliases if a not in version.aliases]
        if not missing:
            return
        aiplatform = self._aiplatform()
        from google.api_core import exceptions

        try:
            aiplatform.models.ModelRegistry(self.parent).add_version_aliases(missing, version.version_id)
        except exceptions.GoogleAPICallError as exc:
            raise explain(exc, f"moving aliases {missing} to version {version.version_id}") from exc
