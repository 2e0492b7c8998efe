"""Runtime settings read from environment variables: pydantic-settings, and one line per wrong variable.

Each settings class is a `pydantic_settings.BaseSettings` with its `env_prefix` (or an alias for a
variable another contract names, such as Vertex AI's `AIP_*`); `read` builds one from the process
environment, or from a mapping a test or a subprocess passes, and turns a validation error into
`NAME='value' is not valid: what is allowed`, one line per variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)

# pydantic's bound errors, said as the comparison the value must meet.
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


class EdgeEnvironment(BaseSettings):
    """The `edge` CLI's and its pipeline stages' own variables, each `EDGE_<FIELD>`: set by a user,
    CI, Compose, an image's build, or the job `edge pipeline train --on vertex` submits. (The model
    server, monitoring, the cloud settings and the webapp have their own settings classes.)"""

    model_config = SettingsConfigDict(
        env_prefix="EDGE_", env_ignore_empty=True, frozen=True, str_strip_whitespace=True
    )

    # How often a long operation prints a line without a terminal (CI, a log file): CircleCI ends a
    # step after 10 minutes without output.
    progress_seconds: float = Field(default=30.0, gt=0)
    # Training on Vertex AI: the trainer image (else the one `edge image push` recorded) and how
    # often the job's state is asked for.
    trainer_image: str | None = None
    vertex_poll_seconds: float = Field(default=15.0, gt=0)
    # Set in the Vertex AI job: the Secret Manager version holding the tracking URL, the submitter's
    # DVC versions of the inputs (JSON; the image has no dvc.lock), where the job runs, and (by
    # Vertex AI itself) the job's id.
    tracking_secret: str | None = None
    data_version: dict[str, str] | None = None
    vertex_region: str | None = None
    vertex_project: str | None = None
    vertex_job_id: str | None = Field(default=None, validation_alias="CLOUD_ML_JOB_ID")
    # Seeding the raw data: a local folder to copy from, else these mirrors (comma-separated URLs).
    data_source: str | None = None
    data_mirrors: Annotated[tuple[str, ...] | None, NoDecode] = None
    # An image has no .git: `edge image build` bakes in the commit it was built from.
    git_commit: str | None = None
    git_branch: str | None = None
    git_source: str | None = None
    git_dirty: bool = False
    # Experiment tracking: MongoDB's URL (checked by edge.tracking.observers, which never shows its
    # password), the local journal of runs, and who runs (else the login).
    tracking_url: str | None = None
    runs_dir: str | None = None
    user: str | None = None

    # Other tools' variables that Edge reads too, by their own names: Google's project and Cloud
    # Storage emulator (gcsfs), the docker client to build with and the engine's address (named in
    # errors), and whether TensorFlow uses oneDNN and which of the CPU's instructions oneDNN may use
    # (recorded with a model's machine: a limit makes another CPU's bits).
    google_cloud_project: str | None = Field(default=None, validation_alias="GOOGLE_CLOUD_PROJECT")
    storage_emulator_host: str | None = Field(default=None, validation_alias="STORAGE_EMULATOR_HOST")
    docker: str | None = Field(default=None, validation_alias="DOCKER")
    docker_host: str | None = Field(default=None, validation_alias="DOCKER_HOST")
    tf_enable_onednn_opts: str | None = Field(default=None, validation_alias="TF_ENABLE_ONEDNN_OPTS")
    onednn_max_cpu_isa: str | None = Field(default=None, validation_alias="ONEDNN_MAX_CPU_ISA")
    # DVC's project root, set for every stage command: in an experiment run in a temporary copy of
    # the workspace (`dvc exp run --temp`, queued experiments), the workspace it was started from.
    dvc_root: str | None = Field(default=None, validation_alias="DVC_ROOT")

    @field_validator("data_mirrors", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return (
            tuple(part.strip() for part in value.split(",") if part.strip())
            if isinstance(value, str)
            else value
        )


def environment(environ: Mapping[str, str] | None = None) -> EdgeEnvironment:
    """The `edge` CLI's own variables (default: from the process environment), checked."""
    if environ is None:
        return _environment_of(tuple(os.environ.items()))
    return read(EdgeEnvironment, environ)


@lru_cache(maxsize=4)
def _environment_of(items: tuple[tuple[str, str], ...]) -> EdgeEnvironment:
    # Building a settings object validates every field, and storage asks for one on each gs:// call:
    # build it once per distinct environment (it is frozen, so callers may share it).
    return read(EdgeEnvironment, dict(items))


class SettingsError(ValueError):
    """An environment variable holds a value its setting does not allow; the message names it."""


def read(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: object) -> S:
    """Build `cls` from `environ` (default: the process environment); overrides that are not None win."""
    source = EnvSettingsSource(cls)
    # The variables as the source keeps those of os.environ: by lower-case name unless the class is
    # case-sensitive, the empty ones left out when it ignores them.
    source.env_vars = {
        (key if source.case_sensitive else key.lower()): value
        for key, value in (os.environ if environ is None else environ).items()
        if not (source.env_ignore_empty and value == "")
    }
    values = source()
    # The source names a field that has an alias by its first alias: an override must too, to win.
    for name, value in overrides.items():
        if value is not None:
            values[variables(cls, name)[0] if cls.model_fields[name].validation_alias else name] = value
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(describe(exc, cls, environ)) from None


def variables(cls: type[BaseSettings], field: str) -> list[str]:
    """The environment variables that set `field`, first wins."""
    alias = cls.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"{cls.model_config.get('env_prefix', '')}{field}".upper()]


def describe(exc: ValidationError, cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> str:
    """One line per wrong variable: `NAME='value' is not valid: what is allowed`."""
    given = {key.upper() for key in (os.environ if environ is None else environ)}
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        names = variables(cls, field) if field in cls.model_fields else [field.upper()]
        name = next((n for n in names if n.upper() in given), names[0])
        lines.append(f"{name}={error['input']!r} is not valid: {allowed(error)}")
    return "\n".join(lines)


def allowed(error: ErrorDetails) -> str:
    """What the value must be, from a pydantic error (params.yaml's errors are said the same way)."""
    context = error.get("ctx") or {}
    if error["type"] in _BOUNDS:
        (limit,) = context.values()
        return f"must be {_BOUNDS[error['type']]} {limit:g}"
    if error["type"] == "too_short":
        return f"must have at least {context['min_length']} item(s)"
    if error["type"] == "bool_parsing":
        return "must be true or false"
    message = str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    return message[:1].lower() + message[1:]
