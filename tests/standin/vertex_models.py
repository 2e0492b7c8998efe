"""The Vertex AI Model Registry: models with versions, aliases and labels, as the REST API has them.

`models:upload` creates a model (with `modelId`) or a new version of `parentModel`, answered as a
finished operation; `GET models/ID`, `models/ID@<version or alias>`, `models/ID:listVersions`
(with a `labels.k="v"` filter), `models?filter=`, `models/ID@V:mergeVersionAliases`. An alias names
one version at a time: giving it to another version takes it away from the first, as the service
does, and `default` is the version `models/ID` resolves to.

Models are kept per project and location, named by project number as Vertex names them; a name
given with the project id designates the same model, a name in another project none.

Stand-in-only differences: nothing is copied from `artifactUri` (the service copies the artifact
into its own bucket and serves that copy); filters understand one `labels.k="v"` or
`display_name="x"` clause, nothing more.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

from tests.standin.server import ApiError, Request, StandIn, new_id

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
        # projects/<number>/locations/<location>/models/<id> -> its versions, in order
        self.models: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        base = "/v1/projects/{project}/locations/{location}/models"
        standin.route("POST", base + ":upload", "aiplatform.models.upload")(self.upload)
        standin.route("GET", base, "aiplatform.models.list")(self.list)
        standin.route("GET", base + "/{model}", "aiplatform.models.get")(self.get)
        standin.route("GET", base + "/{model}:listVersions", "aiplatform.models.list")(self.list_versions)
        standin.route("POST", base + "/{model}:mergeVersionAliases", "aiplatform.models.update")(
            self.merge_aliases
        )

    # --- what other stand-ins (endpoints) ask ----------------------------------------------------
    def canonical(self, project: str) -> str:
        """The project number for a project id or number (unknown ones are kept as given)."""
        access = self.standin.access
        found = access.find(project) if access is not None else None
        return found.number if found is not None else project

    def resolve(self, name: str) -> dict[str, Any]:
        """The version a (possibly versioned) model resource name designates; ApiError 404 if none."""
        match = re.match(r"^projects/([^/]+)/locations/([^/]+)/models/([^/@]+)(?:@(.+))?$", name)
        if not match:
            raise ApiError(400, f"Invalid model name {name!r}.")
        project, location, model_id = self.canonical(match.group(1)), match.group(2), match.group(3)
        selector = match.group(4) or "default"
        versions = self.models.get(f"projects/{project}/locations/{location}/models/{model_id}")
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
        here = f"projects/{project}/locations/{location}/models"
        with self._lock:
            parent = body.get("parentModel")
            if parent:
                match = re.match(r"^projects/([^/]+)/locations/([^/]+)/models/([^/@]+)$", parent)
                key = (
                    f"projects/{self.canonical(match.group(1))}/locations/{match.group(2)}/models/{match.group(3)}"
                    if match
                    else ""
                )
                # A parent in another project or location is not this registry's to extend.
                if not key.startswith(here + "/") or key not in self.models:
                    raise ApiError(404, f"Parent model {parent} not found.")
                model_id = key.rsplit("/", 1)[-1]
            else:
                model_id = body.get("modelId") or new_id({k.rsplit("/", 1)[-1] for k in self.models})
                if not _MODEL_ID.match(model_id) and not model_id.isdigit():
                    raise ApiError(400, f"Invalid model id {model_id!r}.")
                if f"{here}/{model_id}" in self.models:
                    raise ApiError(409, f"Model {model_id} already exists.", "ALREADY_EXISTS")
                self.models[f"{here}/{model_id}"] = []
                # The first version of a model is always its default one.
                if "default" not in aliases:
                    aliases.append("default")
            name = f"{here}/{model_id}"
            versions = self.models[name]
            version_id = str(len(versions) + 1)
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
            self._give_aliases(name, version, aliases)
        return self.standin.operations.finished(
            name, UPLOAD_RESPONSE, {"model": name, "modelVersionId": version_id}
        )

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
        found = [
            {**v, "name": f"{v['name']}@{v['versionId']}"} for v in self.models[first["name"]] if test(v)
        ]
        return {"models": found} if found else {}

    def merge_aliases(self, request: Request) -> dict[str, Any]:
        version = self.resolve(self._name(request))
        changes = list((request.body or {}).get("versionAliases") or [])
        if not changes:
            raise ApiError(400, "MergeVersionAliasesRequest.version_aliases is required.")
        with self._lock:
            removed = [a[1:] for a in changes if a.startswith("-")]
            added = [a for a in changes if not a.startswith("-")]
            if "default" in removed:
                raise ApiError(400, "The default alias cannot be removed; give it to another version.")
            version["versionAliases"] = [a for a in version["versionAliases"] if a not in removed]
            self._give_aliases(version["name"], version, added)
            version["versionUpdateTime"] = now()
        return dict(version)

    # --- helpers ---------------------------------------------------------------------------------
    def _give_aliases(self, model: str, version: dict[str, Any], aliases: list[str]) -> None:
        for alias in aliases:
            for other in self.models[model]:
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
