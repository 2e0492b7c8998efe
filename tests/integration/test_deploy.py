"""Register, gate and deploy with the real Vertex AI SDK against the local stand-in.

The stand-in (tests/standin: vertex_models, vertex_endpoints) keeps a registry and endpoints and, on
`deployModel`, starts the version's serving command with Vertex AI's `AIP_*` variables; `:predict`
is routed to those servers in proportion to the traffic split. Models are tiny CNNs trained for
seconds on learnable synthetic images; `edge` commands run in-process through the real CLI.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from edge.cli import app
from tests.cloud_env import endpoint_env, ready_cloud, write_settings
from tests.datagen import NO_AUGMENTATION, write_fashion_files
from tests.standin.cloud import LocalCloud
from tests.standin.gcs_front import GcsFront
from tests.standin.server import ApiError, StandIn
from tests.standin.vertex_endpoints import DockerServers, ProcessServers, Servers, VertexEndpoints
from tests.standin.vertex_models import VertexModels
from tests.verdicts import judge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

IMAGE = "127.0.0.1:5000/edge-trainer@sha256:" + "ab" * 32


@dataclass
class Models:
    prepared: Path
    good: Path  # v1
    better: Path  # v2: trained longer
    untrained: Path  # fails the gate's floor


def _train(prepared: Path, target: Path, epochs: int, seed: int) -> Path:
    from edge.model import ModelParams
    from edge.pipeline import train_stage
    from edge.train import TrainParams

    params = TrainParams(
        seed=seed,
        epochs=epochs,
        batch_size=32,
        learning_rate=3e-3,
        warmup_epochs=0,
        **NO_AUGMENTATION,  # type: ignore[arg-type]
        model=ModelParams(filters=(8,), dense_units=32, bfloat16=False, tta_flip=False),
    )
    lineage = {
        "git": {"commit": "c0ffee" + "0" * 34, "dirty": False},
        "data_version": {"data/raw/fashion-mnist": "d" * 32},
        "params": {"epochs": epochs, "seed": seed},
    }
    reports = str(target.parent / f"reports-{target.name}")
    train_stage(str(prepared), str(target), reports, params, lineage, tracking_run_id=uuid.uuid4().hex)
    judge(target)  # tiny models, declared passed: these tests judge the release, not the model
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from edge.model import ModelParams, build_model, save_model
    from edge.pipeline import PrepareParams, prepare_stage

    root = tmp_path_factory.mktemp("deploy-models")
    raw = write_fashion_files(root / "raw", n_train=1200, n_test=200, compress=False)
    prepared = root / "prepared"
    prepare_stage(str(raw), str(prepared), PrepareParams(validation_size=100))
    untrained = root / "untrained"
    save_model(
        build_model(ModelParams(filters=(8,), dense_units=32, bfloat16=False, tta_flip=False)),
        str(untrained),
        {"name": "fashion-mnist-cnn", "version": "untrained0001", "lineage": {}},
    )
    v1, v2 = _train(prepared, root / "v1", 3, 1), _train(prepared, root / "v2", 4, 2)
    return Models(prepared, v1, v2, untrained)


@pytest.fixture
def servers() -> Servers:
    # The serving command runs as a local process: the same `edge serve` the trainer image runs.
    return ProcessServers(bin_dir=str(Path(sys.executable).parent))


@dataclass
class Vertex:
    cloud: LocalCloud
    models: VertexModels
    endpoints: VertexEndpoints
    project: Path
    image: str

    def mutations(self, path: str) -> list[Any]:
        return [r for r in self.cloud.log.mutations() if path in r.path]


@pytest.fixture
def image() -> str:
    return IMAGE


@pytest.fixture
def server_env() -> dict[str, str]:
    return {}  # a local process inherits the test's environment, the emulator's address included


def enter_project(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    cloud: LocalCloud,
    gcs_bucket: str,
    models: Models,
    params: str,
) -> None:
    """Work in `tmp_path` as a project on `cloud`: its endpoints, an edge.yaml, the data and `params`."""
    for name, value in endpoint_env(cloud).items():
        monkeypatch.setenv(name, value)
    bucket = gcs_bucket.removeprefix("gs://")
    monkeypatch.setenv("EDGE_CONFIG", str(write_settings(tmp_path, bucket=bucket)))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(models.prepared, tmp_path / "data" / "prepared")
    (tmp_path / "params.yaml").write_text(params)


@pytest.fixture
def vertex(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    servers: Servers,
    models: Models,
    image: str,
    server_env: dict[str, str],
    gcs_bucket: str,
) -> Iterator[Vertex]:
    cloud = ready_cloud()
    registry = VertexModels(cloud.vertex)
    endpoints = VertexEndpoints(cloud.vertex, registry, servers, server_env, health_timeout=180)
    enter_project(
        monkeypatch,
        tmp_path,
        cloud,
        gcs_bucket,
        models,
        "evaluate:\n  min_accuracy: 0.5\n  min_class_recall: 0.0\ngate:\n  max_regression: 0.05\n",
    )
    try:
        yield Vertex(cloud, registry, endpoints, tmp_path, image)
    finally:
        endpoints.stop()
        cloud.stop()


def edge(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def ok(*args: str) -> Result:
    result = edge(*args)
    assert result.exit_code == 0, f"edge {' '.join(args)}:\n{result.output}"
    return result


def register(model_dir: Path, image: str = IMAGE) -> str:
    """Register and return the version id."""
    result = ok("model", "register", "--model-dir", str(model_dir), "--image", image)
    return result.stdout.split("@", 1)[1].split()[0]


def endpoint_state() -> dict[str, Any]:
    state: dict[str, Any] = json.loads(ok("endpoint", "status", "--json").stdout)
    return state


def traffic() -> dict[str, int]:
    return {d["version"]: d["traffic"] for d in endpoint_state()["deployed"]}


def release_v1(models: Models, image: str = IMAGE) -> str:
    v1 = register(models.good, image)
    ok("model", "gate", "--candidate", str(models.good), "--production", "registry")
    ok("deploy", "--smoke-images", "5")
    return v1


def test_register_deploy_predict_then_canary_and_promote(vertex: Vertex, models: Models) -> None:
    v1, v2 = full_flow(vertex, models)
    # By hand: put the previous version back, and roll forward again the same way.
    assert "serves all the traffic again" in ok("endpoint", "rollback").stdout
    assert traffic() == {v1: 100}
    assert vertex.models.resolve(f"{_model_name(vertex)}@production")["versionId"] == v1
    assert vertex.models.resolve(f"{_model_name(vertex)}@previous")["versionId"] == v2
    assert vertex.endpoints.servers_running() == 1


@pytest.mark.timeout(2400)  # the session builds and pushes the 2.5 GB trainer image first
class TestInDocker:
    """The same flow with the serving container itself: the trainer image, run by the Docker engine."""

    @pytest.fixture
    def servers(self, docker_engine: Any) -> Servers:
        return DockerServers(docker_engine)

    @pytest.fixture
    def image(self, pushed_trainer_image: Any) -> str:
        return str(pushed_trainer_image.ref)

    @pytest.fixture
    def server_env(self, gcs_emulator: Any) -> dict[str, str]:
        return dict(gcs_emulator.env())

    def test_register_deploy_predict_then_canary_and_promote(self, vertex: Vertex, models: Models) -> None:
        full_flow(vertex, models)


def full_flow(vertex: Vertex, models: Models) -> tuple[str, str]:
    """register v1 -> deploy -> predict -> register v2 -> gate -> canary 10% -> smoke -> promote."""
    start = time.perf_counter()
    v1 = release_v1(models, vertex.image)
    assert traffic() == {v1: 100}
    answer = ok("endpoint", "predict", str(_sample_png(vertex.project, models)))
    assert f"from version {v1}" in answer.stdout

    v2 = register(models.better, vertex.image)
    assert v2 != v1
    gate = ok("model", "gate", "--candidate", str(models.better), "--production", "registry")
    assert "Release gate: PASSED" in gate.stdout
    report = json.loads((vertex.project / "reports/gate/gate.json").read_text())
    # Production was fetched from the registry: v1's artifact in the bucket, scored on the same split.
    v1_version = json.loads((models.good / "metadata.json").read_text())["version"]
    assert report["production"]["model"]["dir"].endswith(f"/models/{v1_version}")
    assert report["production"]["model"]["dir"].startswith("gs://")

    ok("deploy", "--canary", "10", "--smoke-images", "5")
    elapsed = time.perf_counter() - start

    # The canary went out with 10% while v1 kept 90%, then v2 took everything and v1 was undeployed.
    deploys = vertex.mutations(":deployModel")
    assert len(deploys) == 2
    canary_split = deploys[1].body["trafficSplit"]
    assert sorted(canary_split.values()) == [10, 90] and canary_split["0"] == 10
    assert len(vertex.mutations(":undeployModel")) == 1
    assert traffic() == {v2: 100}
    (deployed,) = endpoint_state()["deployed"]
    assert {"production", "default"} <= set(deployed["aliases"])
    assert deployed["labels"]["git_commit"].startswith("c0ffee")
    # Model, tracked run and registry entry point at each other.
    v2_run = json.loads((models.better / "run.json").read_text())
    assert deployed["labels"]["run_id"] == v2_run["tracking_run_id"]
    assert deployed["labels"]["image_digest"] == vertex.image.split("@sha256:")[1][:32]
    assert vertex.endpoints.servers_running() == 1
    previous = vertex.models.resolve(f"{_model_name(vertex)}@previous")
    assert previous["versionId"] == v1
    # The smoke test went through the endpoint's split: about ten requests per image for a 10% canary.
    entries = list(vertex.cloud.log)
    first = entries.index(deploys[1])
    promoted = next(i for i, e in enumerate(entries) if e.method == "PATCH" and i > first)
    smoke = [e for e in entries[first:promoted] if e.path.endswith(":predict")]
    assert 40 <= len(smoke) <= 60
    print(
        f"\nfull flow against the stand-in: {elapsed:.1f} s, {len(vertex.cloud.log)} requests "
        f"({len(vertex.cloud.log.mutations())} mutating), {vertex.cloud.log.counts()}"
    )
    return v1, v2


def test_a_model_that_fails_the_gate_never_reaches_the_endpoint(vertex: Vertex, models: Models) -> None:
    v1 = release_v1(models)
    # Never judged by its test suite: the registry refuses it outright.
    unjudged = edge("model", "register", "--model-dir", str(models.untrained), "--image", IMAGE)
    assert unjudged.exit_code == 1
    assert "has not been judged by its test suite: only a model that passed is registered" in unjudged.output
    # Declared passed by its suite, it is registered: the release gate is what must stop it.
    judge(models.untrained)
    register(models.untrained)
    gate = edge("model", "gate", "--candidate", str(models.untrained), "--production", "registry")
    assert gate.exit_code == 1 and "release gate failed" in gate.output
    before = len(vertex.mutations(":deployModel"))
    refused = edge("deploy")
    assert refused.exit_code == 1
    assert "failed the release gate" in refused.output
    assert len(vertex.mutations(":deployModel")) == before
    assert traffic() == {v1: 100}


def test_a_candidate_whose_server_never_gets_healthy_is_rolled_back(
    vertex: Vertex, models: Models, tmp_path: Path
) -> None:
    v1 = release_v1(models)
    ok("model", "gate", "--candidate", str(models.better), "--production", "registry")
    # The registered copy of the gated model is damaged: its server cannot load it.
    broken = tmp_path / "broken"
    shutil.copytree(models.better, broken)
    shutil.rmtree(broken / "serving")
    v2 = register(broken)
    result = edge("deploy", "--smoke-images", "5")
    assert result.exit_code == 1
    assert f"version {v2} could not be deployed" in result.output
    assert "rolled back" in result.output
    assert traffic() == {v1: 100}
    assert vertex.endpoints.servers_running() == 1
    assert vertex.models.resolve(f"{_model_name(vertex)}@production")["versionId"] == v1


def test_rerunning_after_a_crash_between_steps_converges(vertex: Vertex, models: Models) -> None:
    v1 = release_v1(models)
    v2 = register(models.better)
    ok("model", "gate", "--candidate", str(models.better), "--production", "registry")
    # The process dies right after the canary is up: the traffic move to 100% never arrives.
    unavailable = ApiError(503, "The service is unavailable.")
    vertex.cloud.vertex.fail_next("PATCH", r"/endpoints/[^/:]+$", unavailable)
    crashed = edge("deploy", "--smoke-images", "5")
    assert crashed.exit_code == 1 and "run `edge deploy` again" in crashed.output
    assert traffic() == {v1: 90, v2: 10}

    # Then it dies after undeploying v1, before the aliases move.
    vertex.cloud.vertex.fail_next("POST", r":mergeVersionAliases$", unavailable)
    assert edge("deploy", "--smoke-images", "5").exit_code == 1
    assert traffic() == {v2: 100}
    assert vertex.models.resolve(f"{_model_name(vertex)}@production")["versionId"] == v1

    deploys = len(vertex.mutations(":deployModel"))
    ok("deploy", "--smoke-images", "5")
    assert traffic() == {v2: 100}
    assert vertex.models.resolve(f"{_model_name(vertex)}@production")["versionId"] == v2
    # Converged without deploying anything again; a further run changes nothing at all.
    assert len(vertex.mutations(":deployModel")) == deploys
    mutations = len(vertex.cloud.log.mutations())
    again = ok("deploy", "--smoke-images", "5")
    assert f"Nothing to release: no version is a candidate; version {v2} is in production" in again.output
    assert len(vertex.cloud.log.mutations()) == mutations
    # Registering the same model again is a no-op too.
    assert register(models.better) == v2
    uploads = vertex.mutations("models:upload")
    assert len(uploads) == 2
    # Each version's server logs its predictions under the bucket, for `edge monitor report`.
    for upload in uploads:
        env = {e["name"]: e["value"] for e in upload.body["model"]["containerSpec"]["env"]}
        assert env["EDGE_MONITOR_LOG"].startswith("gs://") and env["EDGE_MONITOR_LOG"].endswith(
            "/predictions"
        )


def test_a_model_registered_from_a_job_output_is_kept_under_models(
    vertex: Vertex, models: Models, gcs_bucket: str, gcs_emulator: Any
) -> None:
    from edge import storage

    # Where a Vertex job leaves its model: under staging/, which the bucket's lifecycle rule empties.
    staged = f"{gcs_bucket}/staging/jobs/edge-train-0123-20260101-000000/model"
    storage.upload_tree(models.good, staged)
    register(staged)
    (upload,) = vertex.mutations("models:upload")
    version = json.loads((models.good / "metadata.json").read_text())["version"]
    assert upload.body["model"]["artifactUri"] == f"{gcs_bucket}/models/{version}"
    kept = gcs_emulator.objects(gcs_bucket)
    assert f"models/{version}/metadata.json" in kept
    # Once staging/ is gone, the registered version still deploys.
    for name in kept:
        if name.startswith("staging/"):
            storage.remove(f"{gcs_bucket}/{name}")
    ok("model", "gate", "--candidate", str(models.good), "--production", "registry")
    ok("deploy", "--smoke-images", "3")


def test_after_a_release_status_shows_whole_aliases_and_an_unregistered_model_is_named(
    vertex: Vertex, models: Models
) -> None:
    v1 = release_v1(models)
    (deployed,) = endpoint_state()["deployed"]
    # Promoted, v1 is production and no longer the candidate.
    assert deployed["version"] == v1 and sorted(deployed["aliases"]) == ["default", "production"]
    shown = ok("endpoint", "status").stdout.split()
    assert "default" in shown and "production" in shown  # whole, one per line, at 80 columns
    # A new model gated but never registered: the advice is to register it, not to gate again.
    ok("model", "gate", "--candidate", str(models.better), "--production", "registry")
    refused = edge("deploy", "--smoke-images", "3")
    assert refused.exit_code == 1
    assert "`edge model register`" in refused.output
    assert "run `edge model gate`" not in refused.output
    assert traffic() == {v1: 100}


def test_a_deployment_prints_progress_lines_while_vertex_deploys(
    vertex: Vertex, models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No terminal here, as in CI: a line every EDGE_PROGRESS_SECONDS while deployModel runs.
    monkeypatch.setenv("EDGE_PROGRESS_SECONDS", "0.3")
    register(models.good)
    ok("model", "gate", "--candidate", str(models.good), "--production", "registry")
    done = ok("deploy", "--smoke-images", "3")
    ticks = [
        line for line in done.output.splitlines() if line.startswith("Waiting for version 1 to be deployed (")
    ]
    assert len(ticks) >= 2, done.output


def test_the_deployed_server_runs_as_the_jobs_account_and_writes_its_prediction_log(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    servers: Servers,
    models: Models,
    gcs_bucket: str,
    gcs_emulator: Any,
) -> None:
    """Vertex's default serving identity may only read the model: the log needs the jobs account."""
    cloud = ready_cloud()
    front = GcsFront(cloud.add(StandIn("storage")), gcs_emulator.url)
    registry = VertexModels(cloud.vertex)
    endpoints = VertexEndpoints(cloud.vertex, registry, servers, {}, health_timeout=180, storage=front)
    jobs = f"edge-jobs@{cloud.project.project_id}.iam.gserviceaccount.com"
    cloud.grant("roles/storage.objectAdmin", f"serviceAccount:{jobs}")  # what `edge setup` grants
    try:
        enter_project(
            monkeypatch,
            tmp_path,
            cloud,
            gcs_bucket,
            models,
            "evaluate:\n  min_accuracy: 0.5\n  min_class_recall: 0.0\n",
        )
        release_v1(models)
        (proxy,) = endpoints.identities.values()
        deadline = time.monotonic() + 30
        while not any(j.permission == "storage.objects.create" for j in proxy.judged):
            assert time.monotonic() < deadline, f"the server never wrote its log: {proxy.judged}"
            time.sleep(0.2)
        writes = [j for j in proxy.judged if j.permission == "storage.objects.create"]
        assert {j.principal for j in writes} == {f"serviceAccount:{jobs}"}
        assert all(j.status == 200 for j in writes), writes
        assert all("predictions" in j.path or "/upload/" in j.path for j in writes)
        (deploy,) = [r for r in cloud.log.mutations() if r.path.endswith(":deployModel")]
        assert deploy.body["deployedModel"]["serviceAccount"] == jobs
    finally:
        endpoints.stop()
        cloud.stop()


def _model_name(vertex: Vertex) -> str:
    return next(iter(vertex.models.models))  # projects/<number>/locations/<region>/models/<id>


def _sample_png(folder: Path, models: Models) -> Path:
    import io

    import numpy as np
    from PIL import Image

    with np.load(models.prepared / "test.npz") as npz:
        image = npz["images"][0]
    path = folder / "sample.png"
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8), mode="L").save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path
