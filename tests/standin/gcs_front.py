"""A recording front for gcp-storage-emulator, for the bucket administration `edge setup` does.

It forwards every JSON API call to the emulator and logs it like the other stand-ins, so tests can
assert on the requests our code sent. One gap of the emulator is closed here, the way the real JSON
API behaves: a bucket insert (`POST /storage/v1/b`) honours `location`, `iamConfiguration`,
`lifecycle` and `labels` (the emulator creates a default US bucket and ignores them; it does apply
them on PATCH, which the front sends right after the insert). Object I/O (gcsfs, containers) goes
straight to the emulator, not through here.
"""

from __future__ import annotations

from typing import Any

import requests

from tests.standin.server import Reply, Request, StandIn

INSERT_FIELDS = ("location", "iamConfiguration", "lifecycle", "labels", "storageClass")


class GcsFront:
    def __init__(self, standin: StandIn, emulator_url: str) -> None:
        self.emulator = emulator_url.rstrip("/")
        for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
            standin.route(method, "/{rest:path}")(self.forward)

    def forward(self, request: Request) -> Reply:
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
