"""`edge.yaml`: the project's cloud settings, one validated object that says what to fix when wrong.

Experiment settings live in params.yaml; where things run in Google Cloud lives here. Every Google
API endpoint can be overridden (in the `endpoints:` block or with `EDGE_<API>_ENDPOINT`), for Private
Service Connect or to point the whole tool at local stand-ins: that is how the tests reach 127.0.0.1.
No Google SDK is imported here, so `edge config` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge import envsettings

SCHEMA_VERSION = 1
CONFIG_ENV = "EDGE_CONFIG"
DEFAULT_PATH = Path("edge.yaml")

# Regions where Vertex AI custom training, Artifact Registry and Secret Manager are all offered.
REGIONS = (
    "europe-west2",
    "europe-west1",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west9",
    "europe-north1",
    "europe-southwest1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west4",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast3",
    "asia-south1",
    "asia-southeast1",
    "australia-southeast1",
    "me-west1",
)

# Machine families Vertex AI custom training accepts without an accelerator (N1 may take one, below),
# with the vCPU counts each comes in.
MACHINE_FAMILIES: dict[str, tuple[int, ...]] = {
    "n1-standard": (4, 8, 16, 32, 64, 96),
    "n1-highmem": (2, 4, 8, 16, 32, 64, 96),
    "n1-highcpu": (16, 32, 64, 96),
    "n2-standard": (4, 8, 16, 32, 48, 64, 80),
    "n2-highmem": (2, 4, 8, 16, 32, 48, 64, 80),
    "n2-highcpu": (16, 32, 48, 64, 80),
    "e2-standard": (4, 8, 16, 32),
    "e2-highmem": (2, 4, 8, 16),
    "e2-highcpu": (16, 32),
    "c2-standard": (4, 8, 16, 30, 60),
}
# Which GPUs a machine takes, and how many, as Vertex AI names them: N1 machines take a T4, V100, P4 or
# P100 in the counts below; A2 and G2 machines come with their GPUs attached, one model in one count
# per machine type (a2-highgpu-1g: one A100; g2-standard-24: two L4s). Sources: "Configure compute
# resources for custom training", https://cloud.google.com/vertex-ai/docs/training/configure-compute
# (its GPU table), and https://cloud.google.com/compute/docs/gpus (the A2 and G2 machine types).
N1_ACCELERATORS: dict[str, tuple[int, ...]] = {
    "NVIDIA_TESLA_T4": (1, 2, 4),
    "NVIDIA_TESLA_V100": (1, 2, 4, 8),
    "NVIDIA_TESLA_P4": (1, 2, 4),
    "NVIDIA_TESLA_P100": (1, 2, 4),
}
GPU_MACHINES: dict[str, tuple[str, int]] = {
    **{f"a2-highgpu-{n}g": ("NVIDIA_TESLA_A100", n) for n in (1, 2, 4, 8)},
    **{f"a2-ultragpu-{n}g": ("NVIDIA_A100_80GB", n) for n in (1, 2, 4, 8)},
    **{
        f"g2-standard-{size}": ("NVIDIA_L4", gpus)
        for size, gpus in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8))
    },
}
MACHINE_TYPES = (
    *(f"{family}-{n}" for family, sizes in MACHINE_FAMILIES.items() for n in sizes),
    *GPU_MACHINES,
)
ACCELERATORS = (
    "NVIDIA_TESLA_T4",
    "NVIDIA_L4",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_P100",
    "NVIDIA_TESLA_P4",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
)


def accelerator_problem(machine_type: str, accelerator_type: str | None, count: int) -> str | None:
    """What is wrong with a machine and GPU pairing Vertex AI would refuse, or None when it takes it."""
    if machine_type in GPU_MACHINES:
        gpu, gpus = GPU_MACHINES[machine_type]
        if accelerator_type != gpu or count != gpus:
            return (
                f"{machine_type} comes with {gpus} {gpu}: set accelerator_type: {gpu} and "
                f"accelerator_count: {gpus}"
            )
        return None
    if not accelerator_type:
        return None
    machines = [m for m, (g, _) in GPU_MACHINES.items() if g == accelerator_type]
    where = "an n1- machine type" if accelerator_type in N1_ACCELERATORS else ", ".join(machines)
    if not machine_type.startswith("n1-"):
        return f"{machine_type} takes no GPU: for {accelerator_type} choose {where}, or set no accelerator"
    counts = N1_ACCELERATORS.get(accelerator_type)
    if counts is None:
        return f"{accelerator_type} is not attached to N1 machines: choose one of {where}"
    if count not in counts:
        return f"{machine_type} takes {' or '.join(map(str, counts))} {accelerator_type}, not {count}"
    return None


# The APIs Edge calls; each may be given another endpoint (`endpoints.<name>` or EDGE_<NAME>_ENDPOINT).
APIS = (
    "aiplatform",
    "storage",
    "serviceusage",
    "artifactregistry",
    "iam",
    "secretmanager",
    "resourcemanager",
    "run",
)

# The Google resource ids edge.yaml names: the pattern each must match, and what it is when it does not.
_IDS: dict[str, tuple[re.Pattern[str], str]] = {
    "project": (
        re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"),
        "a project id: 6-30 lowercase letters, digits and dashes, starting with a letter and not "
        "ending with a dash (see `gcloud projects list`)",
    ),
    "bucket": (
        re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$"),
        "a bucket name: 3-63 lowercase letters, digits, dashes and underscores, starting and ending "
        "with a letter or digit, without 'goog' (e.g. <project>-edge)",
    ),
    "repository": (
        re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"),
        "a repository id: lowercase letters, digits and dashes, starting with a letter, at most 63 "
        "characters",
    ),
    "service_account": (
        re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"),
        "a service account id: 6-30 lowercase letters, digits and dashes, starting with a letter "
        "(e.g. edge-jobs)",
    ),
    "tracking_secret": (
        re.compile(r"^[A-Za-z0-9_-]{1,255}$"),
        "a secret id: letters, digits, dashes and underscores",
    ),
}


class SettingsError(ValueError):
    """edge.yaml is missing or wrong; the message names the field and how to fix it."""


class Endpoints(BaseModel):
    """Where each Google API is reached; unset means Google's public endpoint."""

    model_config = ConfigDict(extra="forbid")

    aiplatform: str | None = None
    storage: str | None = None
    serviceusage: str | None = None
    artifactregistry: str | None = None
    iam: str | None = None
    secretmanager: str | None = None
    resourcemanager: str | None = None
    run: str | None = None
    # The Docker registry images are pushed to, instead of Artifact Registry (a local registry).
    registry: str | None = None
    # `anonymous` only for local stand-ins: no credentials are looked up or sent.
    credentials: Literal["default", "anonymous"] = "default"

    @field_validator(*APIS)
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(
                f"{value!r} is not an endpoint URL; write it with its scheme, e.g. "
                "https://europe-west2-aiplatform.googleapis.com or http://127.0.0.1:8085"
            )
        return value.rstrip("/") if value else value


class Settings(BaseModel):
    """Everything Edge needs to know about the Google Cloud project it works in."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    project: str = Field(description="Google Cloud project id")
    region: str = Field(default="europe-west2", description="Region for Vertex AI, bucket and registry")
    bucket: str = Field(description="Cloud Storage bucket for data, models and job outputs")
    repository: str = Field(default="edge", description="Artifact Registry Docker repository")
    service_account: str = Field(default="edge-jobs", description="Service account id the jobs run as")
    machine_type: str = Field(default="n1-standard-4", description="Machine type for training jobs")
    accelerator_type: str | None = Field(default=None, description="GPU for training jobs, or none")
    accelerator_count: int = Field(default=0, ge=0, le=8, description="How many GPUs")
    train_on: Literal["local", "vertex"] = Field(
        default="local", description="Where `edge pipeline train` (and so `dvc repro`) trains"
    )
    job_timeout_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60, description="Training job limit")
    tracking_secret: str = Field(
        default="edge-tracking-url", description="Secret Manager secret holding the MongoDB URL"
    )
    endpoint_name: str = Field(default="edge-fashion-mnist", description="Vertex AI endpoint name")
    endpoints: Endpoints = Field(default_factory=Endpoints)

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"schema version {value} is not supported (this Edge reads version {SCHEMA_VERSION}); "
                "run `edge config` to write a current file"
            )
        return value

    @field_validator("bucket", "service_account", mode="before")
    @classmethod
    def _bare_name(cls, value: Any, info: ValidationInfo) -> Any:
        # People paste `gs://name/` and full service account emails: keep the id.
        if not isinstance(value, str):
            return value
        return (
            value.removeprefix("gs://").rstrip("/") if info.field_name == "bucket" else value.split("@", 1)[0]
        )

    @field_validator(*_IDS)
    @classmethod
    def _id(cls, value: str, info: ValidationInfo) -> str:
        pattern, what = _IDS[str(info.field_name)]
        reserved = info.field_name == "bucket" and (value.startswith("goog") or "google" in value)
        if not pattern.match(value) or reserved:
            raise ValueError(f"{value!r} is not {what}")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value not in REGIONS:
            raise ValueError(f"{value!r} is not a Vertex AI region; choose one of {', '.join(REGIONS)}")
        return value

    @field_validator("machine_type")
    @classmethod
    def _machine(cls, value: str) -> str:
        if value not in MACHINE_TYPES:
            families = ", ".join(f"{f}-{{{','.join(map(str, n))}}}" for f, n in MACHINE_FAMILIES.items())
            families += ", a2-highgpu-{1,2,4,8}g, a2-ultragpu-{1,2,4,8}g, g2-standard-{4,8,12,16,24,32,48,96}"
            raise ValueError(f"{value!r} is not a machine type Vertex AI trains on; choose from {families}")
        return value

    @field_validator("accelerator_type")
    @classmethod
    def _accelerator(cls, value: str | None) -> str | None:
        if value in (None, "", "none", "NONE"):
            return None
        if value not in ACCELERATORS:
            raise ValueError(f"{value!r} is not a known accelerator; choose one of {', '.join(ACCELERATORS)}")
        return value

    @field_validator("endpoint_name")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not 1 <= len(value) <= 128:
            raise ValueError("an endpoint name has 1 to 128 characters")
        return value

    @model_validator(mode="after")
    def _gpus(self) -> Settings:
        if self.accelerator_type and self.accelerator_count == 0:
            self.accelerator_count = 1
        if not self.accelerator_type and self.accelerator_count:
            raise ValueError("accelerator_count is set but accelerator_type is not: name the GPU or set 0")
        # Before a job is submitted, not as the job's 400: Vertex takes only these pairings.
        problem = accelerator_problem(self.machine_type, self.accelerator_type, self.accelerator_count)
        if problem:
            raise ValueError(problem)
        return self

    # What the other cloud modules derive from the settings, in one place.
    @property
    def service_account_email(self) -> str:
        return f"{self.service_account}@{self.project}.iam.gserviceaccount.com"

    @property
    def image_registry(self) -> str:
        """Where images are pushed: Artifact Registry's repository, unless a registry is configured."""
        return self.endpoints.registry or f"{self.region}-docker.pkg.dev/{self.project}/{self.repository}"

    @property
    def bucket_uri(self) -> str:
        return f"gs://{self.bucket}"

    @property
    def dvc_remote_uri(self) -> str:
        return f"gs://{self.bucket}/dvc"

    def endpoint(self, api: str) -> str | None:
        """The endpoint override for `api` (one of APIS), or None for Google's own."""
        return getattr(self.endpoints, api)  # type: ignore[no-any-return]

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=False)
        endpoints = {k: v for k, v in data.pop("endpoints").items() if v not in (None, "default")}
        if endpoints:
            data["endpoints"] = endpoints
        return yaml.safe_dump(data, sort_keys=False)


class CloudEnvironment(BaseSettings):
    """The environment's part of the cloud settings: which settings file, and endpoint overrides that
    point the tool at local stand-ins (`EDGE_<API>_ENDPOINT`, `EDGE_REGISTRY`, `EDGE_CREDENTIALS`)."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", env_ignore_empty=True, frozen=True)

    # $EDGE_CONFIG: the settings file, else edge.yaml in the current directory.
    config: Path = DEFAULT_PATH
    aiplatform_endpoint: str | None = None
    storage_endpoint: str | None = None
    serviceusage_endpoint: str | None = None
    artifactregistry_endpoint: str | None = None
    iam_endpoint: str | None = None
    secretmanager_endpoint: str | None = None
    resourcemanager_endpoint: str | None = None
    run_endpoint: str | None = None
    registry: str | None = None
    credentials: str | None = None

    def endpoint_overrides(self) -> dict[str, Any]:
        """The overrides that are set, as edge.yaml's `endpoints` block spells them (checked there)."""
        found: dict[str, Any] = {api: getattr(self, f"{api}_endpoint") for api in APIS}
        found.update(registry=self.registry, credentials=self.credentials)
        return {key: value for key, value in found.items() if value}


def environment(environ: Mapping[str, str] | None = None) -> CloudEnvironment:
    """Read the cloud settings' environment variables (default: the process environment)."""
    return envsettings.read(CloudEnvironment, environ)


def config_path(path: Path | None = None) -> Path:
    """The settings file: `path`, else $EDGE_CONFIG, else edge.yaml in the current directory."""
    return path or environment().config


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Endpoint overrides from the environment: EDGE_<API>_ENDPOINT, EDGE_REGISTRY, EDGE_CREDENTIALS."""
    return environment(environ).endpoint_overrides()


def validate(data: dict[str, Any], source: str = "edge.yaml") -> Settings:
    """Build Settings from a mapping; a mistake becomes one SettingsError naming each bad field."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(describe(exc, source)) from None


def describe(exc: ValidationError, source: str) -> str:
    """One line per problem: `<source>: <field>: <what is wrong and how to fix it>`."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(file)"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = f"missing; set it with `edge config --{where.replace('_', '-')} ...`"
        elif error["type"] == "extra_forbidden":
            message = "unknown setting; remove it (see `edge config show` for the known ones)"
        lines.append(f"{source}: {where}: {message}")
    return "\n".join(lines)


def field_error(key: str, value: Any) -> str | None:
    """What is wrong with one setting on its own (for the `edge config` prompts), or None."""
    try:
        Settings.__pydantic_validator__.validate_assignment(Settings.model_construct(), key, value)
    except ValidationError as exc:
        return "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
    return None


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read edge.yaml (and the endpoint overrides in the environment) and validate it."""
    file = config_path(path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except FileNotFoundError:
        raise SettingsError(
            f"{file} not found: run `edge config` first (or set {CONFIG_ENV} to the settings file)"
        ) from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{file} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{file} must be a mapping of settings; run `edge config` to rewrite it")
    overrides = env_overrides(environ)
    if overrides:
        raw["endpoints"] = {**(raw.get("endpoints") or {}), **overrides}
    return validate(raw, str(file))


def save(settings: Settings, path: Path | None = None) -> Path:
    """Write edge.yaml atomically; it holds no secret, so it may be committed."""
    file = config_path(path)
    header = "# Edge's cloud settings (`edge config` writes this file; `edge config show` prints it).\n"
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(header + settings.to_yaml())
    tmp.replace(file)
    return file
