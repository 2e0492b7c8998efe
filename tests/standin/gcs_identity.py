"""Cloud Storage as a container on Vertex AI sees it: every object request made as the container's identity.

On Vertex, a serving container reaches Cloud Storage with a token of the identity it runs as (from the
metadata server), and Cloud Storage judges each request by that identity. The model server here talks
to the GCS emulator anonymously (STORAGE_EMULATOR_HOST), so the endpoint stand-in gives each server
its own `IdentityProxy` as STORAGE_EMULATOR_HOST: the proxy judges every request as the deployed
model's identity, then forwards it to the emulator byte for byte.

The identity is the deployed model's `serviceAccount` when the deployment names one, judged by the
cloud's IAM policies as Cloud Storage would (the `GcsFront`'s rules: project and bucket policies).
Without one, the container runs as a Vertex-managed account that "has access to read model artifacts
from the URI stored in the AIP_STORAGE_URI environment variable. Don't rely on the service account
having any other permissions" (https://cloud.google.com/vertex-ai/docs/general/custom-service-account,
"Prediction container"): reads of the artifact's bucket pass, anything else is refused with
Cloud Storage's 403 ("... does not have storage.objects.create access to the Google Cloud Storage
object.").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, unquote

import requests

from tests.standin.gcs_front import GcsFront, permission_for
from tests.standin.server import ApiError, LocalHttpServer, Request

READS = ("storage.objects.get", "storage.objects.list")
# Not forwarded either way: they belong to one connection.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "authorization"}


@dataclass
class Judged:
    """One request the proxy judged: who, what, and the status it answered."""

    principal: str
    method: str
    path: str
    permission: str
    status: int


@dataclass
class IdentityProxy(LocalHttpServer):
    """Forwards to `emulator` the requests `principal` may make; `service_account` None = Vertex's own."""

    front: GcsFront
    emulator: str
    service_account: str | None
    artifact_uri: str
    managed_account: str
    judged: list[Judged] = field(default_factory=list)

    @property
    def principal(self) -> str:
        return f"serviceAccount:{self.service_account or self.managed_account}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def judge(self, method: str, path: str, query: dict[str, str]) -> tuple[str, ApiError | None]:
        """The permission the request needs, and the refusal when the identity lacks it."""
        # Media downloads (`/download/storage/v1/...?alt=media`) need what a metadata read needs.
        path = path.removeprefix("/download")
        try:
            permission, bucket = permission_for(method, path)
        except ApiError as exc:
            return "", exc
        email = self.service_account or self.managed_account
        if self.service_account is None:
            artifact_bucket = self.artifact_uri.removeprefix("gs://").split("/", 1)[0]
            if permission in READS and bucket == artifact_bucket:
                return permission, None
            return permission, _storage_refusal(email, permission)
        access = self.front.access
        assert access is not None, "the storage front judges with the cloud's Access"
        token = access.issue_token(self.principal)
        request = Request("storage", method, path, query, {"authorization": f"Bearer {token}"}, None)
        try:
            self.front.authorize(request)
        except ApiError as exc:
            if exc.http_status == 403:
                return permission, _storage_refusal(email, permission)
            return permission, exc
        return permission, None

    def start(self) -> IdentityProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: `judged` is the record."""

            def _handle(self) -> None:
                path, _, raw_query = self.path.partition("?")
                query = dict(parse_qsl(raw_query, keep_blank_values=True))
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                permission, refusal = proxy.judge(self.command, unquote(path), query)
                if refusal is not None:
                    data = json.dumps(refusal.body()).encode()
                    proxy.judged.append(
                        Judged(proxy.principal, self.command, path, permission, refusal.http_status)
                    )
                    self.send_response(refusal.http_status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                answer = requests.request(
                    self.command, proxy.emulator + self.path, data=body or None, headers=headers, timeout=60
                )
                proxy.judged.append(
                    Judged(proxy.principal, self.command, path, permission, answer.status_code)
                )
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in HOP_BY_HOP | {"content-encoding"}:
                        self.send_header(name, value.replace(proxy.emulator, proxy.url))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle  # noqa: N815

        self.serve(Handler, "standin-gcs-identity")
        return self


def _storage_refusal(email: str, permission: str) -> ApiError:
    """Cloud Storage's 403 for an identity without `permission` (its JSON API error message)."""
    kind = "bucket" if permission.startswith("storage.buckets.") else "object"
    return ApiError(
        403,
        f"{email} does not have {permission} access to the Google Cloud Storage {kind}. Permission "
        f"'{permission}' denied on resource (or it may not exist).",
    )
