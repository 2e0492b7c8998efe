"""A real Google Cloud Storage emulator (gcp-storage-emulator) on 127.0.0.1, for tests of `gs://` code.

`gcs_emulator` starts one emulator process per test session, in memory, on a free port, and stops it
by PID; `gcs_bucket` makes a fresh bucket per test and points every GCS client of the test and of the
processes it starts (gcsfs, google-cloud-storage, DVC's gs remote) at the emulator through
`STORAGE_EMULATOR_HOST`. Limits of the emulator worth knowing (shared/cloud/google-clients-local.md):
it ignores `ifGenerationMatch` preconditions, so compare-and-swap cannot be proven against it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.live_servers import free_port, stop, wait_until_ok

EMULATOR = str(Path(sys.executable).with_name("gcp-storage-emulator"))
START_TIMEOUT = 60.0
PROJECT = "edge-test"

# What a process needs to reach the emulator and nothing else: the endpoint, and gcsfs's experimental
# bucket lookup off (it stalls 60 s per bucket against anything but Google).
GCS_ENV_KEYS = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "GOOGLE_CLOUD_PROJECT")


@dataclass
class GcsEmulator:
    """A running emulator: its URL (`http://127.0.0.1:PORT`) and process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def env(self) -> dict[str, str]:
        """Return the environment variables that point GCS clients at this emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name by default); return its `gs://` URI."""
        name = name or f"edge-test-{secrets.token_hex(4)}"
        answer = requests.post(
            f"{self.url}/storage/v1/b", params={"project": PROJECT}, json={"name": name}, timeout=10
        )
        answer.raise_for_status()
        return f"gs://{name}"

    def upload(self, bucket_uri: str, name: str, data: bytes) -> None:
        """Store one object under exactly `name`, over the JSON API (not through our code)."""
        bucket = bucket_uri.removeprefix("gs://").split("/", 1)[0]
        answer = requests.post(
            f"{self.url}/upload/storage/v1/b/{bucket}/o",
            params={"uploadType": "media", "name": name},
            data=data,
            timeout=10,
        )
        answer.raise_for_status()

    def read(self, bucket_uri: str, name: str) -> bytes | None:
        """Return one object's content, or None when there is no such object (not through our code)."""
        bucket = bucket_uri.removeprefix("gs://").split("/", 1)[0]
        answer = requests.get(
            f"{self.url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}", params={"alt": "media"}, timeout=10
        )
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.content

    def objects(self, bucket_uri: str) -> list[str]:
        """Return the names of every object in a bucket, over the JSON API (not through our code)."""
        bucket = bucket_uri.removeprefix("gs://").split("/", 1)[0]
        names: list[str] = []
        token: str | None = None
        while True:
            params = {"pageToken": token} if token else {}
            answer = requests.get(f"{self.url}/storage/v1/b/{bucket}/o", params=params, timeout=10)
            answer.raise_for_status()
            body = answer.json()
            names += [item["name"] for item in body.get("items", [])]
            token = body.get("nextPageToken")
            if not token:
                return sorted(names)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """A gcp-storage-emulator process for the whole session, in memory, on a free 127.0.0.1 port."""
    port = free_port()
    log = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [EMULATOR, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    emulator = GcsEmulator(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_until_ok(process, f"{emulator.url}/storage/v1/b", log, START_TIMEOUT)
        yield emulator
    finally:
        stop(process, grace=10)


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket on the emulator (`gs://NAME`); this test's GCS clients all point there."""
    for key, value in gcs_emulator.env().items():
        monkeypatch.setenv(key, value)
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_emulator.url
    return gcs_emulator.create_bucket()
