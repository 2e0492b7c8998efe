"""A Docker registry's read side on 127.0.0.1: manifests by tag, answered with their digest.

What `docker push` leaves in a registry, as the Docker Registry HTTP API v2 serves it
(https://distribution.github.io/distribution/spec/api/): `GET /v2/` answers 200, `HEAD` or `GET
/v2/<name>/manifests/<reference>` answers the manifest with its `Docker-Content-Digest` (the
sha256 of the manifest's bytes) when the tag exists, else 404 `MANIFEST_UNKNOWN`. A manifest whose
media type the `Accept` header leaves out is not served (404), as the registry does for an index
asked by a client that reads only single manifests. No pushes: tests `put` what a push would have
left. Plain HTTP, no authentication, like a local `docker-registry`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.standin.server import LocalHttpServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class RegistryStandIn(LocalHttpServer):
    """Repositories of tagged manifests; `requests` lists `(method, path)` as received."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def put(self, repository: str, tag: str, media_type: str = OCI_MANIFEST) -> str:
        """Store a manifest under `repository:tag`, as a push leaves it; return its digest."""
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": media_type, "tag": tag, "repository": repository}
        ).encode()
        self.manifests[(repository, tag)] = (media_type, body)
        return "sha256:" + hashlib.sha256(body).hexdigest()

    @property
    def host(self) -> str:
        return self.address

    def start(self) -> RegistryStandIn:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: `requests` is the record."""

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                registry.requests.append((self.command, self.path))
                if self.path == "/v2/":
                    self._answer(200, b"{}", {"Content-Type": "application/json"})
                    return
                name, sep, reference = self.path.removeprefix("/v2/").rpartition("/manifests/")
                found = registry.manifests.get((name, reference)) if sep else None
                accepted = self.headers.get("Accept", "")
                if found is None or (accepted and found[0] not in accepted):
                    error = {"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": reference}
                    body = json.dumps({"errors": [error]}).encode()
                    self._answer(404, body, {"Content-Type": "application/json"})
                    return
                media_type, body = found
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                self._answer(200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})

            do_HEAD = do_GET  # noqa: N815

        self.serve(Handler, "standin-registry")
        return self
