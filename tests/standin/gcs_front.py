"""A recording front for gcp-storage-emulator, for the bucket administration `edge setup` does.

It forwards every JSON API call to the emulator and logs it like the other stand-ins, so tests can
assert on the requests our code sent. One gap of the emulator is closed here, the way the real JSON
API behaves: a bucket insert (`POST /storage/v1/b`) honours `location`, `iamConfiguration`,
`lifecycle` and `labels` (the emulator creates a default US bucket and ignores them; it does apply
them on PATCH, which the front sends right after the insert). Object I/O (gcsfs, containers) goes
straight to the emulator, not through here.

With the cloud's `Access` attached, every call is judged as Cloud Storage judges it: the caller's
token, the bucket's project (the one that created it through here, else the cloud's first
project), the Cloud Storage API enabled there, and the permission of the method
(https://cloud.google.com/storage/docs/access-control/iam-json) held through the project's policy or
the bucket's own (read from the emulator, so what `setIamPolicy` stored is what counts). A bucket
policy that binds a service account not yet visible is refused as IAM refuses it.
"""

from __future__ import annotations

import re
from typing import Any

import requests

from tests.standin.access import API_NAMES
from tests.standin.server import ApiError, Reply, Request, StandIn

INSERT_FIELDS = ("location", "iamConfiguration", "lifecycle", "labels", "storageClass")
API = API_NAMES["storage"]
_BUCKET = re.compile(r"^(?:/upload)?/storage/v1/b(?:/(?P<bucket>[^/]+)(?P<rest>/.*)?)?$")


def permission_for(method: str, path: str) -> tuple[str, str | None]:
    """The permission a JSON API call needs, and the bucket it names (None for insert and list)."""
    match = _BUCKET.match(path)
    if not match:
        raise ApiError(404, f"No such JSON API path: {path}")
    bucket, rest = match.group("bucket"), match.group("rest") or ""
    if bucket is None:
        return ("storage.buckets.create" if method == "POST" else "storage.buckets.list"), None
    if rest == "/iam":
        return ("storage.buckets.getIamPolicy" if method == "GET" else "storage.buckets.setIamPolicy"), bucket
    if rest.startswith("/iam/testPermissions"):
        return "storage.buckets.get", bucket
    if rest.startswith("/o"):
        one = rest.startswith("/o/")
        verbs = {"GET": "get" if one else "list", "POST": "create", "PUT": "update", "PATCH": "update"}
        return f"storage.objects.{verbs.get(method, 'delete')}", bucket
    verbs = {"GET": "get", "PATCH": "update", "PUT": "update", "DELETE": "delete"}
    return f"storage.buckets.{verbs.get(method, 'update')}", bucket


class GcsFront:
    def __init__(self, standin: StandIn, emulator_url: str) -> None:
        self.emulator = emulator_url.rstrip("/")
        self.access = standin.access
        self.owners: dict[str, str] = {}  # bucket -> the project that created it here
        for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
            standin.route(method, "/{rest:path}")(self.forward)

    def authorize(self, request: Request) -> None:
        """Caller, project, API state, permission; 401/403 in Google's shape, as the others."""
        access = self.access
        if access is None:
            return
        principal = access.principal(request)
        request.principal = principal
        permission, bucket = permission_for(request.method, request.path)
        if bucket is None:
            project_id = request.query.get("project", "")
        else:
            project_id = self.owners.get(bucket) or next(iter(access.projects))
        project = access.project(project_id, API)
        created = bucket or (request.body or {}).get("name")
        if created:
            self.owners.setdefault(created, project.project_id)
        access.require_enabled(project, API)
        resources = [f"projects/{project.project_id}"]
        if bucket is not None:
            resource = f"projects/_/buckets/{bucket}"
            answer = requests.get(f"{self.emulator}/storage/v1/b/{bucket}/iam", timeout=30)
            if answer.ok:
                access.policies.policies[resource] = {"bindings": answer.json().get("bindings", [])}
            resources.append(resource)
            shown = resource
        else:
            shown = f"projects/{project.project_id}"
        access.require(principal, permission, resources, f"//{API}/{shown}", API)
        if permission == "storage.buckets.setIamPolicy":
            access.check_members(request.body or {})

    def forward(self, request: Request) -> Reply:
        try:
            self.authorize(request)
        except ApiError as exc:
            return Reply(exc.body(), exc.http_status)
        url = f"{self.emulator}{request.path}"
        answer = requests.request(
            request.method,
            url,
            params=request.query,
            data=request.raw_body or None,
            headers={"content-type": request.headers.get("content-type", "application/json")},
            timeout=30,
        )
        body: Any = answer.json() if answer.content else None
        if request.method == "POST" and request.path == "/storage/v1/b" and answer.ok and request.body:
            wanted = {k: request.body[k] for k in INSERT_FIELDS if k in request.body}
            if wanted:
                patched = requests.patch(
                    f"{self.emulator}/storage/v1/b/{body['name']}", json=wanted, timeout=30
                )
                patched.raise_for_status()
                body = patched.json()
        return Reply(body if body is not None else {}, answer.status_code)
