"""The Vertex AI Model Registry: models with versions, aliases and labels, as the REST API has them.

`models:upload` creates a model (with `modelId`) or a new version of `parentModel`, answered as a
finished operation; `GET models/ID`, `models/ID@<version or alias>`, `models/ID:listVersions`
(with a `labels.k="v"` filter), `models?filter=`, `models/ID@V:mergeVersionAliases`. An alias names
one version at a time: giving it to another version takes it away from the first, as the service
does, and `default` is the version `models/ID` resolves to.

Stand-in-only differences: nothing is copied from `artifactUri` (the service copies the artifact
into its own bucket and serves that copy); filters understand one `labels.k="v"` or
`display_name="x"` clause, nothing more.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

from tests.standin.server import ApiError, Request, StandIn

UPLOAD_RESPONSE = "type.googleapis.com/google.cloud.aiplatform.v1.UploadModelResponse"
DEDICATED_RESOURCES = 1
_ALIAS = re.compile(r"^[a-z][a-z0-9-]{0,126}[a-z0-9]$")
_MODEL_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL = re.compile(r"^[a-z0-9_-]{0,63}$")
_FILTER = re.compile(
    r'^\s*(labels\.(?P<label>[a-z0-9_-]+)|display_name|displayName)\s*=\s*"(?P<value>[^"]*)"\s*$'
)


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class VertexModels:
    """Registered models by id; each holds its versions in order."""

    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.models: dict[str, list[dict[str, Any]]] = {}
        self._ids = iter(range(7_000_000_000, 8_000_000_000))
        self._lock = threading.Lock()
        base = "/v1/projects/{project}/locations/{location}/models"
        standin.route("POST", base + ":upload")(self.upload)
        standin.route("GET", base)(self.list)
        standin.route("GET", base + "/{model}")(self.get)
        standin.route("GET", base + "/{model}:listVersions")(self.list_versions)
        standin.route("POST", base + "/{model}:mergeVersionAliases")(self.merge_aliases)

    # --- what other stand-ins (endpoints) ask ----------------------------------------------------
    def resolve(self, name: str) -> dict[str, Any]:
        """The version a (possibly versioned) model resource name designates; ApiError 404 if none."""
        match = re.match(r"^projects/[^/]+/locations/[^/]+/models/([^/@]+)(?:@(.+))?$", name)
        if not match:
            raise ApiError(400, f"Invalid model name {name!r}.")
        model_id, selector = match.group(1), match.group(2) or "default"
        versions = self.models.get(model_id)
        if not versions:
            raise ApiError(404, f"Model {name} not found.")
        for version in versions:
            if version["versionId"] == selector or selector in version["versionAliases"]:
                return version
        raise ApiError(404, f"Model {name} not found (no version or alias {selector!r}).")

    # --- routes ----------------------------------------------------------------------------------
    def upload(self, request: Request) -> dict[str, Any]:
        body = request.body or {}
        model = body.get("model") or {}
        project, location = request.params["project"], request.params["location"]
        if not model.get("displayName"):
            raise ApiError(400, "Model.display_name is required.")
        spec = model.get("containerSpec") or {}
        if not spec.get("imageUri"):
            raise ApiError(400, "Model.container_spec.image_uri is required for a custom container.")
        for key, value in (model.get("labels") or {}).items():
            if not _LABEL.match(key) or not key or not _LABEL.match(value):
                raise ApiError(400, f"Invalid label {key}={value!r}: lowercase letters, digits, - and _.")
        aliases = list(model.get("versionAliases") or [])
        for alias in aliases:
            if not _ALIAS.match(alias) or re.fullmatch(r"\d+", alias):
                raise ApiError(400, f"Invalid version alias {alias!r}.")
        with self._lock:
            parent = body.get("parentModel")
            if parent:
                model_id = parent.rsplit("/", 1)[-1]
                if model_id not in self.models:
                    raise ApiError(404, f"Parent model {parent} not found.")
            else:
                model_id = body.get("modelId") or str(next(self._ids))
                if not _MODEL_ID.match(model_id):
                    raise ApiError(400, f"Invalid model id {model_id!r}.")
                if model_id in self.models:
                    raise ApiError(409, f"Model {model_id} already exists.", "ALREADY_EXISTS")
                self.models[model_id] = []
                # The first version of a model is always its default one.
                if "default" not in aliases:
                    aliases.append("default")
            versions = self.models[model_id]
            version_id = str(len(versions) + 1)
            name = f"projects/{project}/locations/{location}/models/{model_id}"
            created = now()
            version = {
                "name": name,
                "displayName": model["displayName"],
                "description": model.get("description", ""),
                "versionId": version_id,
                "versionAliases": [],
                "versionCreateTime": created,
                "versionUpdateTime": created,
                "createTime": versions[0]["createTime"] if versions else created,
                "updateTime": created,
                "labels": dict(model.get("labels") or {}),
                "artifactUri": model.get("artifactUri", ""),
                "containerSpec": spec,
                "supportedDeploymentResourcesTypes": [DEDICATED_RESOURCES],
                "etag": f"v{version_id}",
            }
            versions.append(version)
            self._give_aliases(model_id, version, aliases)
        return self.standin.operations.done(UPLOAD_RESPONSE, {"model": name, "modelVersionId": version_id})

    def get(self, request: Request) -> dict[str, Any]:
        return dict(self.resolve(self._name(request)))

    def list(self, request: Request) -> dict[str, Any]:
        prefix = f"projects/{request.params['project']}/locations/{request.params['location']}/"
        test = _filter(request.query.get("filter"))
        found = []
        for versions in self.models.values():
            default = next(v for v in versions if "default" in v["versionAliases"])
            if default["name"].startswith(prefix) and test(default):
                found.append(dict(default))
        return {"models": found} if found else {}

    def list_versions(self, request: Request) -> dict[str, Any]:
        first = self.resolve(self._name(request))
        test = _filter(request.query.get("filter"))
        model_id = first["name"].rsplit("/", 1)[-1]
        found = [{**v, "name": f"{v['name']}@{v['versionId']}"} for v in self.models[model_id] if test(v)]
        return {"models": found} if found else {}

    def merge_aliases(self, request: Request) -> dict[str, Any]:
        version = self.resolve(self._name(request))
        changes = list((request.body or {}).get("versionAliases") or [])
        if not changes:
            raise ApiError(400, "MergeVersionAliasesRequest.version_aliases is required.")
        with self._lock:
            model_id = version["name"].rsplit("/", 1)[-1]
            removed = [a[1:] for a in changes if a.startswith("-")]
            added = [a for a in changes if not a.startswith("-")]
            if "default" in removed:
                raise ApiError(400, "The default alias cannot be removed; give it to another version.")
            version["versionAliases"] = [a for a in version["versionAliases"] if a not in removed]
            self._give_aliases(model_id, version, added)
            version["versionUpdateTime"] = now()
        return dict(version)

    # --- helpers ---------------------------------------------------------------------------------
    def _give_aliases(self, model_id: str, version: dict[str, Any], aliases: list[str]) -> None:
        for alias in aliases:
            for other in self.models[model_id]:
                if alias in other["versionAliases"]:
                    other["versionAliases"].remove(alias)
            version["versionAliases"].append(alias)

    @staticmethod
    def _name(request: Request) -> str:
        p = request.params
        return f"projects/{p['project']}/locations/{p['location']}/models/{p['model']}"


def _filter(expression: str | None) -> Any:
    if not expression:
        return lambda _model: True
    match = _FILTER.match(expression)
    if not match:
        raise ApiError(400, f'Unsupported filter {expression!r} (the stand-in knows labels.k="v").')
    label, value = match.group("label"), match.group("value")
    if label:
        return lambda model: model.get("labels", {}).get(label) == value
    return lambda model: model.get("displayName") == value
