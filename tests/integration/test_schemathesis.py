"""A bounded schemathesis run against the live server's own OpenAPI document: never a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.live_servers import model_server

pytestmark = pytest.mark.slow

ST = str(Path(sys.executable).with_name("st"))
# 413 is how the server answers too many instances, which the schema states as maxItems.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "404", "405", "413"]
"""


def test_no_server_errors_on_generated_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with model_server(tiny_model_dir, tmp_path / "model.log") as server:
        result = subprocess.run(
            [
                ST,
                "--config-file",
                str(config),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                # A schema-valid b64 string is rarely a PNG, so valid-looking data may be refused.
                "--exclude-checks",
                "positive_data_acceptance",
                # The coverage phase spends minutes building boundary bodies of 64x784 numbers.
                "--phases",
                "examples,fuzzing",
                "--max-examples",
                "50",
                "--workers",
                "1",
                "--seed",
                "4",
                "--generation-database",
                "none",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert server.process.poll() is None, "the server died"
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
