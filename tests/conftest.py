"""Fixtures shared by every test group: tiny Fashion-MNIST-shaped data made on the spot."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import verdict
from edge.data import CLASS_NAMES
from tests.datagen import write_fashion_files

# The Docker fixtures (engine, registry, built images), for any test folder: see tests/docker_env.py.
from tests.docker_env import (  # noqa: F401
    DOCKER_FIXTURES,
    IN_CI,
    base_image,
    docker_engine,
    local_registry,
    pushed_trainer_image,
    trainer_image,
    webapp_image,
)

# A real GCS emulator for `gs://` code: `gcs_emulator` (one per session), `gcs_bucket` (one per test).
from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parent.parent

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their environment. The CLI's Rich
# consoles, made when edge.cli is imported, would keep 80 columns for good and ignore the COLUMNS a
# test sets; without them, a worker sizes its output as a plain `pytest` run does.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

# The local Google Cloud stand-ins' fixtures (local_cloud, cloud_env).
pytest_plugins = ["tests.cloud_env", "tests.tracking_env"]

# Nothing a test runs may phone home or reach Google: DVC analytics off, metadata server on a dead port.
QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "NO_GCE_CHECK": "True",
    "GCE_METADATA_HOST": "127.0.0.1:1",
    "GCE_METADATA_IP": "127.0.0.1:1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs a Docker engine `containers`, so `-m "not containers"` skips it."""
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.containers)


@pytest.fixture(autouse=True, scope="session")
def _quiet_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """QUIET_ENV, and DVC's per-repository index in the session's temporary folder: DVC keeps one for
    every repository it opens in a machine-wide folder (/var/tmp/dvc), never removed, and the tests'
    repositories are temporary."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in QUIET_ENV.items():
            patch.setenv(key, value)
        patch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site-cache")))
        yield


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    """A folder with tiny synthetic IDX files, uncompressed, as the prepare stage reads them."""
    return write_fashion_files(tmp_path / "raw", compress=False)


REAL_DATA_DIRS = (
    REPO_ROOT.parent / "shared" / "data" / "fashion-mnist",
    Path("/usr/share/datasets/fashion-mnist"),
)


@pytest.fixture(scope="session")
def real_fashion_source() -> Path:
    """A local folder with the real Fashion-MNIST files: $EDGE_DATA_SOURCE (as `edge data seed` reads
    it), else the shared offline copy or Debian's."""
    configured = os.environ.get("EDGE_DATA_SOURCE")
    candidates = (Path(configured),) if configured else ()
    for folder in (*candidates, *REAL_DATA_DIRS):
        if (folder / "t10k-labels-idx1-ubyte.gz").is_file():
            return folder
    if configured:
        pytest.fail(f"EDGE_DATA_SOURCE={configured} holds no t10k-labels-idx1-ubyte.gz (the four .gz files)")
    if IN_CI:  # .ci/run installs Debian's copy: there a missing one is a failure, not a skip
        pytest.fail("CI must run the tests on real data, but dataset-fashion-mnist is not installed")
    pytest.skip(
        "no offline copy of Fashion-MNIST: set EDGE_DATA_SOURCE to a folder of the four .gz files "
        "or apt-get install dataset-fashion-mnist"
    )


TINY_MODEL_METADATA = {
    "name": "fashion-mnist",
    "version": "0.0.0-test",
    "class_names": list(CLASS_NAMES),
    "lineage": {"git_commit": "0" * 40, "data_version": "test", "run_id": None},
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained, tiny model saved the way training saves one: .keras, serving/, metadata."""
    from edge.model import ModelParams, build_model, save_model
    from edge.modelcard import HTML_FILE, MARKDOWN_FILE

    folder = tmp_path_factory.mktemp("tiny-model") / "models"
    # A card like training's, so the server's /model-card routes answer 200 as they do in production.
    card = {
        MARKDOWN_FILE: b"# Model card: fashion-mnist 0.0.0-test\n\nAn untrained test model.\n",
        HTML_FILE: b"<!doctype html><title>Model card</title><h1>fashion-mnist 0.0.0-test</h1>",
    }
    metadata = save_model(
        build_model(ModelParams(filters=(8,), dense_units=16)),
        str(folder),
        TINY_MODEL_METADATA,
        extra_files=card,
    )
    # Declared passed: the tests that use it judge the server, not this untrained model.
    verdict.write(str(folder), verdict.Verdict("0.0.0-test", verdict.content_sha256(metadata), True))
    return folder
