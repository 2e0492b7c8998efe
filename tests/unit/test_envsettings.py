"""Runtime settings come from the environment through pydantic-settings; a wrong variable is one line."""

from __future__ import annotations

import pytest

from edge import envsettings, lineage
from edge.cloud.settings import env_overrides
from edge.envsettings import SettingsError, environment


def test_the_cli_variables_are_read_typed() -> None:
    read = environment(
        {
            "EDGE_PROGRESS_SECONDS": "0.5",
            "EDGE_DATA_MIRRORS": "https://a.example/fm/, https://b.example/fm/",
            "EDGE_DATA_VERSION": '{"data/raw/fashion-mnist": "0123abcd.dir"}',
            "CLOUD_ML_JOB_ID": "4242",
            "EDGE_GIT_COMMIT": " abc123 ",
            "EDGE_GIT_DIRTY": "true",
            "EDGE_TRAINER_IMAGE": "",  # empty is unset
            "HOME": "/root",
        }
    )
    assert read.progress_seconds == 0.5
    assert read.data_mirrors == ("https://a.example/fm/", "https://b.example/fm/")
    assert read.data_version == {"data/raw/fashion-mnist": "0123abcd.dir"}
    assert (read.vertex_job_id, read.git_commit, read.git_dirty) == ("4242", "abc123", True)
    assert read.trainer_image is None and read.vertex_poll_seconds == 15.0


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"EDGE_PROGRESS_SECONDS": "soon"},
            "EDGE_PROGRESS_SECONDS='soon' is not valid: must be a valid number",
        ),
        ({"EDGE_VERTEX_POLL_SECONDS": "0"}, "EDGE_VERTEX_POLL_SECONDS='0' is not valid: must be > 0"),
        ({"EDGE_GIT_DIRTY": "maybe"}, "EDGE_GIT_DIRTY='maybe' is not valid: must be true or false"),
        ({"EDGE_DATA_VERSION": "[1]"}, "EDGE_DATA_VERSION=[1] is not valid: must be a valid dictionary"),
    ],
)
def test_a_wrong_variable_is_one_line(environ: dict[str, str], line: str) -> None:
    with pytest.raises(SettingsError) as caught:
        environment(environ)
    assert str(caught.value).startswith(line) and "\n" not in str(caught.value)


def test_an_image_without_git_gives_its_baked_in_lineage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_GIT_COMMIT", raising=False)
    assert lineage.baked_git_info() is None
    monkeypatch.setenv("EDGE_GIT_COMMIT", "abc123")
    monkeypatch.setenv("EDGE_GIT_SOURCE", "https://user:token@github.com/org/edge.git")
    monkeypatch.setenv("EDGE_GIT_DIRTY", "")
    assert lineage.baked_git_info() == {
        "commit": "abc123",
        "branch": None,
        "remote": "https://github.com/org/edge.git",
        "dirty": False,
    }


def test_endpoint_overrides_come_from_the_environment() -> None:
    environ = {"EDGE_AIPLATFORM_ENDPOINT": "http://127.0.0.1:8085", "EDGE_CREDENTIALS": "anonymous"}
    assert env_overrides(environ) == {"aiplatform": "http://127.0.0.1:8085", "credentials": "anonymous"}
    assert env_overrides({}) == {}
    assert envsettings.variables(envsettings.EdgeEnvironment, "vertex_job_id") == ["CLOUD_ML_JOB_ID"]
