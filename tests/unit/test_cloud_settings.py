"""edge.yaml: validation that names the field and the fix, schema version, endpoint overrides, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edge.cli import app
from edge.cloud import settings as cfg

VALID = {"project": "edge-demo-123", "bucket": "edge-demo-123-edge"}


def test_defaults_are_sensible() -> None:
    s = cfg.validate(VALID)
    assert s.region == "europe-west2"
    assert s.schema_version == cfg.SCHEMA_VERSION
    assert s.machine_type == "n1-standard-4"
    assert s.service_account_email == "edge-jobs@edge-demo-123.iam.gserviceaccount.com"
    assert s.image_registry == "europe-west2-docker.pkg.dev/edge-demo-123/edge"
    assert s.dvc_remote_uri == "gs://edge-demo-123-edge/dvc"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("project", "My_Project", "project: 'My_Project' is not a project id"),
        ("project", "abc", "6-30 lowercase"),
        ("bucket", "Bad..Bucket", "bucket: 'Bad..Bucket' is not a bucket name"),
        ("bucket", "google-things", "without 'goog'"),
        (
            "region",
            "mars-west1",
            "region: 'mars-west1' is not a Vertex AI region; choose one of europe-west2",
        ),
        ("machine_type", "n1-standard-3", "machine_type: 'n1-standard-3' is not a machine type"),
        ("accelerator_type", "RTX_4090", "choose one of NVIDIA_TESLA_T4"),
        ("service_account", "x", "service_account: 'x' is not a service account id"),
        ("schema_version", 7, "schema version 7 is not supported"),
    ],
)
def test_errors_name_the_field_and_the_fix(field: str, value: object, expected: str) -> None:
    with pytest.raises(cfg.SettingsError) as info:
        cfg.validate({**VALID, field: value}, "edge.yaml")
    assert f"edge.yaml: {field}:" in str(info.value)
    assert expected in str(info.value)


def test_missing_and_unknown_fields() -> None:
    with pytest.raises(cfg.SettingsError) as info:
        cfg.validate({"bucket": "b-edge", "colour": "blue"})
    message = str(info.value)
    assert "project: missing; set it with `edge config --project ...`" in message
    assert "colour: unknown setting" in message


def test_endpoints_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({**VALID, "endpoints": {"iam": "https://iam.p.googleapis.com"}}))
    env = {"EDGE_AIPLATFORM_ENDPOINT": "http://127.0.0.1:9", "EDGE_CREDENTIALS": "anonymous"}
    s = cfg.load(path, environ=env)
    assert s.endpoint("aiplatform") == "http://127.0.0.1:9"
    assert s.endpoint("iam") == "https://iam.p.googleapis.com"
    assert s.endpoint("storage") is None
    assert s.endpoints.credentials == "anonymous"
    with pytest.raises(cfg.SettingsError, match=r"endpoints.iam: '127.0.0.1:9' is not an endpoint URL"):
        cfg.load(path, environ={"EDGE_IAM_ENDPOINT": "127.0.0.1:9"})


def test_missing_file_says_run_edge_config(tmp_path: Path) -> None:
    with pytest.raises(cfg.SettingsError, match="run `edge config` first"):
        cfg.load(tmp_path / "edge.yaml", environ={})


def test_config_non_interactive_writes_a_valid_file_and_show_prints_it(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "config",
            "--non-interactive",
            "--project",
            "edge-demo-123",
            "--region",
            "europe-west4",
            "--file",
            str(path),
        ],
        env={"EDGE_MACHINE_TYPE": "n1-standard-8"},
    )
    assert done.exit_code == 0, done.output
    written = yaml.safe_load(path.read_text())
    assert written["schema_version"] == 1
    assert written["bucket"] == "edge-demo-123-edge"  # derived from the project
    assert written["machine_type"] == "n1-standard-8"  # from the environment
    assert "endpoints" not in written
    shown = runner.invoke(app, ["config", "show", "--file", str(path)])
    assert shown.exit_code == 0
    assert "europe-west4" in shown.stdout


def test_config_refuses_bad_values_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    runner = CliRunner()
    assert (
        runner.invoke(app, ["config", "-y", "--project", "edge-demo-123", "--file", str(path)]).exit_code == 0
    )
    before = path.read_text()
    done = runner.invoke(app, ["config", "-y", "--region", "moon-1", "--file", str(path)])
    assert done.exit_code == 1
    assert "region: 'moon-1' is not a Vertex AI region" in done.output
    assert "nothing written" in done.output
    assert path.read_text() == before


def test_config_wizard_reasks_until_valid(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    # project (bad, then good), region (Enter = default), bucket, repository, account, machine type,
    # GPU, secret, endpoint name: Enter keeps each default; then "train on Vertex?" yes.
    answers = "Bad_Id\nedge-demo-123\n\n\n\n\n\n\n\n\ny\n"
    done = CliRunner().invoke(app, ["config", "--file", str(path)], input=answers)
    assert done.exit_code == 0, done.output
    assert "is not a project id" in done.output
    written = yaml.safe_load(path.read_text())
    assert written["project"] == "edge-demo-123"
    assert written["bucket"] == "edge-demo-123-edge"
    assert written["region"] == "europe-west2"
    assert written["train_on"] == "vertex"


def test_the_machine_and_gpu_pairings_agree_with_the_vertex_stand_ins_catalogue() -> None:
    """Every pairing edge.yaml accepts, the stand-in (Google's documented table) accepts, and back."""
    from tests.standin.server import ApiError
    from tests.standin.vertex_catalogue import check_machine_spec

    for machine in cfg.MACHINE_TYPES:
        for accelerator in (None, *cfg.ACCELERATORS):
            for count in range(0 if accelerator is None else 1, 9 if accelerator else 1):
                ours = cfg.accelerator_problem(machine, accelerator, count) is None
                spec = {
                    "machineType": machine,
                    "acceleratorType": accelerator or 0,
                    "acceleratorCount": count,
                }
                try:
                    check_machine_spec(spec, "machine_spec")
                    theirs = True
                except ApiError:
                    theirs = False
                assert ours == theirs, (machine, accelerator, count)


def test_a2_machines_are_named_as_vertex_names_them() -> None:
    a100 = {"machine_type": "a2-highgpu-2g", "accelerator_type": "NVIDIA_TESLA_A100"}
    assert cfg.validate({**VALID, **a100, "accelerator_count": 2}).machine_type == "a2-highgpu-2g"
    with pytest.raises(cfg.SettingsError, match="a2-highgpu-2g comes with 2 NVIDIA_TESLA_A100"):
        cfg.validate({**VALID, **a100})


def test_config_leaves_the_environment_s_endpoint_overrides_out_of_edge_yaml(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    emulator = {
        "EDGE_AIPLATFORM_ENDPOINT": "http://127.0.0.1:8085",
        "EDGE_REGISTRY": "127.0.0.1:5000/edge",
        "EDGE_CREDENTIALS": "anonymous",
    }
    runner = CliRunner()
    done = runner.invoke(
        app, ["config", "-y", "--project", "edge-demo-123", "--file", str(path)], env=emulator
    )
    assert done.exit_code == 0, done.output
    text = path.read_text()
    assert "endpoints" not in yaml.safe_load(text)
    assert "127.0.0.1" not in text and "anonymous" not in text
    # They still apply while they are set: `edge config show` reads them from the environment.
    shown = runner.invoke(app, ["config", "show", "--file", str(path)], env=emulator)
    assert "http://127.0.0.1:8085" in shown.stdout
