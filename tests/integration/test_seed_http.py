"""Seeding over HTTP from a real server on 127.0.0.1: success, corruption, dropped connections."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge import data
from edge.cli import app
from edge.data import DataError, RawFile
from tests.datagen import write_fashion_files


class Mirror:
    """A local mirror serving a folder; `faults` maps a file name to how to misbehave."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.faults: dict[str, str] = {}
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                mirror.requests.append(name)
                path = mirror.folder / name
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                fault = mirror.faults.get(name)
                if fault == "corrupt":
                    content = bytearray(gzip.decompress(body))
                    content[-1] ^= 0xFF
                    body = gzip.compress(bytes(content))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":
                    # Promise the whole file, send half, hang up.
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_fashion_files(tmp_path / "mirror")


@pytest.fixture
def mirror(source: Path) -> Iterator[Mirror]:
    with Mirror(source) as running:
        yield running


@pytest.fixture
def catalogue(source: Path) -> tuple[RawFile, ...]:
    return tuple(
        RawFile(f.name, data.md5_hex(gzip.decompress((source / f.gz_name).read_bytes())))
        for f in data.RAW_FILES
    )


def seed_over_http(
    raw: Path, mirrors: list[str], files: tuple[RawFile, ...], **kw: object
) -> data.SeedResult:
    return data.seed(
        raw,
        mirrors=mirrors,
        files=files,
        system_source=raw / "no-system-copy",
        backoff=0.01,
        **kw,  # type: ignore[arg-type]
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_download_with_progress(tmp_path: Path, mirror: Mirror, catalogue: tuple[RawFile, ...]) -> None:
    seen: dict[str, int] = {}
    raw = tmp_path / "data" / "raw"
    result = seed_over_http(
        raw, [mirror.url], catalogue, progress=lambda name, done, total: seen.__setitem__(name, done)
    )
    assert len(result.written) == 4
    assert seen["train-images-idx3-ubyte.gz"] == (mirror.folder / "train-images-idx3-ubyte.gz").stat().st_size
    assert data.load_split(raw, "train")[0].shape == (600, 28, 28)


def test_corrupted_download_is_refused_and_data_untouched(
    tmp_path: Path, mirror: Mirror, catalogue: tuple[RawFile, ...]
) -> None:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "data")
    mirror.faults["t10k-labels-idx1-ubyte.gz"] = "corrupt"
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz.*checksum mismatch, expected md5 \w{32}"):
        seed_over_http(raw, [mirror.url], catalogue)
    assert snapshot(tmp_path / "data") == before


def test_dropped_connection_is_retried_then_refused(
    tmp_path: Path, mirror: Mirror, catalogue: tuple[RawFile, ...]
) -> None:
    mirror.faults["train-images-idx3-ubyte.gz"] = "drop"
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: failed after 3 attempts"):
        seed_over_http(tmp_path / "raw", [mirror.url], catalogue, attempts=3)
    assert mirror.requests.count("train-images-idx3-ubyte.gz") == 3
    assert not (tmp_path / "raw").exists()
    assert list(tmp_path.glob(".seed-*")) == []


def test_fallback_mirror_is_used(tmp_path: Path, mirror: Mirror, catalogue: tuple[RawFile, ...]) -> None:
    with Mirror(tmp_path / "empty") as broken:
        result = seed_over_http(tmp_path / "raw", [broken.url, mirror.url], catalogue)
    assert len(result.written) == 4
    assert broken.requests  # the first mirror was asked first


def test_no_network_and_no_source_names_flag_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGE_DATA_SOURCE", raising=False)
    monkeypatch.setenv("EDGE_DATA_MIRRORS", "http://127.0.0.1:1/")
    monkeypatch.setattr(data, "SYSTEM_SOURCE", tmp_path / "nothing")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["data", "seed", "--raw-dir", "raw", "--no-track"])
    assert result.exit_code == 1
    assert "--source DIR or set EDGE_DATA_SOURCE" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "raw").exists()
