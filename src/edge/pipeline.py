"""The pipeline's stages as functions that read inputs, call the pure code and write outputs.

Each `edge pipeline <stage>` command (and so each DVC stage, the trainer container and a Vertex AI
custom job) calls one of these. Locations may be local paths or `gs://` URIs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge import calibration, envsettings, model_tests, modelcard, storage, verdict
from edge.data import Split, check_split, load_split, split_train_validation, subsample
from edge.evaluate import (
    Evaluation,
    confusion_csv,
    confusion_png,
    evaluate,
    predict_probabilities,
    serving_predictor,
)
from edge.model import RUN_FACTS, SERVING_DIR, read_run, save_model, verify_model_dir, write_run
from edge.model_tests import SuiteParams, SuiteResult
from edge.monitoring.profile import PROFILE_FILE, compute_profile
from edge.release_gate import GateParams
from edge.train import (
    EpochCallback,
    TrainParams,
    TrainResult,
    history_csv,
    load_prepared,
    model_metadata,
    train,
)


class PrepareParams(BaseModel):
    """The `prepare` block of params.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 42
    validation_size: int = Field(default=5000, ge=1)
    # A stratified subset for quick runs; None keeps every image.
    max_train_images: int | None = Field(default=None, ge=1)
    max_test_images: int | None = Field(default=None, ge=1)


EvaluateParams = SuiteParams
"""The `evaluate` block of params.yaml: the model test suite's floors."""


class Params(BaseModel):
    """Every experiment setting, one block per stage, as in params.yaml; a block left out (or left
    empty) takes every default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    # The release gate (`edge model gate`); no DVC stage depends on it.
    gate: GateParams = GateParams()

    @field_validator("prepare", "train", "evaluate", "gate", mode="before")
    @classmethod
    def _empty_block_is_defaults(cls, value: object) -> object:
        # `train:` with nothing under it is YAML's null: every default, as an absent block.
        return {} if value is None else value

    def as_dict(self) -> dict[str, Any]:
        """The settings as params.yaml spells them, JSON-ready (tracked runs and lineage record it)."""
        return self.model_dump(mode="json")


class ParamsError(ValueError):
    """params.yaml cannot be read or holds a wrong value; one line per problem names the key."""


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and check params.yaml: the one way every command and stage reads the experiment settings."""
    try:
        text = storage.read_text(str(path)) if storage.is_remote(str(path)) else Path(path).read_text()
        raw = yaml.safe_load(text)
    except FileNotFoundError:
        raise ParamsError(f"{path} not found; run from the repository root or pass --params") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path} must be a mapping of stage blocks: {', '.join(Params.model_fields)}")
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        raise ParamsError(describe_params_error(exc, str(path))) from None


def describe_params_error(exc: ValidationError, source: str) -> str:
    """One line per problem, `<source>: <key path> = <value given>: <what is allowed>`, e.g.
    `params.yaml: train.epochs = 0: must be >= 1`."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        given = error.get("input")
        if error["type"] == "missing":
            lines.append(f"{source}: {where}: missing; add it")
        elif error["type"] == "extra_forbidden":
            value = "" if isinstance(given, dict | list) else f" = {_shown(given)}"
            keys = ", ".join(_block_at(error["loc"][:-1]).model_fields)
            lines.append(f"{source}: {where}{value}: unknown key; the keys here are {keys}")
        else:
            lines.append(f"{source}: {where} = {_shown(given)}: {envsettings.allowed(error)}")
    return "\n".join(lines)


def _shown(value: object) -> str:
    """A value as YAML would spell it, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _block_at(loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The model that reads the block at `loc` (a mapping's keys are skipped), to list its keys."""
    block: type[BaseModel] = Params
    expect_key = False
    for part in loc:
        if expect_key:
            expect_key = False
            continue
        annotation = block.model_fields[str(part)].annotation
        if get_origin(annotation) is dict:
            annotation, expect_key = get_args(annotation)[1], True
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            block = annotation
    return block


def _write_json(uri: str, content: dict[str, Any]) -> None:
    storage.write_text(uri, json.dumps(content, indent=2) + "\n")


def prepare_stage(raw_dir: str, prepared_dir: str, params: PrepareParams) -> dict[str, Any]:
    """Read the IDX files, check them, split train/validation, write the three splits."""
    train_images, train_labels = load_split(raw_dir, "train")
    test_images, test_labels = load_split(raw_dir, "t10k")
    full_train = Split(train_images, train_labels)
    check_split("raw train", full_train)
    check_split("raw test", Split(test_images, test_labels))
    full_train = subsample(full_train, params.max_train_images, params.seed)
    train_split, validation = split_train_validation(full_train, params.validation_size, params.seed)
    test = subsample(Split(test_images, test_labels), params.max_test_images, params.seed)
    splits = {"train": train_split, "validation": validation, "test": test}
    summary = {
        name: {"count": len(s.labels), "per_class": check_split(name, s)} for name, s in splits.items()
    }
    with storage.local_dir_for_writing(prepared_dir) as staging:
        for name, split in splits.items():
            np.savez(Path(staging, f"{name}.npz"), images=split.images, labels=split.labels)
        Path(staging, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def train_stage(
    prepared_dir: str,
    model_dir: str,
    reports_dir: str,
    params: TrainParams,
    lineage: dict[str, Any],
    *,
    suite: SuiteParams | None = None,
    on_epoch_end: EpochCallback | None = None,
    tracking_run_id: str | None = None,
) -> tuple[TrainResult, dict[str, Any], SuiteResult | None]:
    """Train on the prepared splits; write the model, its metadata, reference profile and model card,
    history and metrics. The card measures the model with the test suite (`suite`), whose result is
    returned too (None without a suite).

    The model folder holds only what the inputs decide (data, parameters, the kind of machine), so
    the same inputs publish the same bytes; when, from which checkout (`lineage["git"]`) and in which
    tracked run (`tracking_run_id`) or Vertex AI job it was made goes into the run record beside it
    (`edge.model.RUN_FILE`), written after the model is published."""
    validation = load_prepared(prepared_dir, "validation")
    result = train(load_prepared(prepared_dir, "train"), validation, params, on_epoch_end=on_epoch_end)
    run = {
        **{key: lineage.get(key) for key in RUN_FACTS},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tracking_run_id": tracking_run_id,
    }
    metadata = model_metadata(result, params, {k: v for k, v in lineage.items() if k not in RUN_FACTS})
    # Monitoring judges live traffic against the validation data as this model sees it.
    profile = compute_profile(result.model, validation.images, metadata["class_names"])
    extra_files = {PROFILE_FILE: profile.to_json().encode()}
    measured = None
    if suite is not None:
        measured = model_tests.run_suite(
            modelcard.keras_predictor(result.model), load_prepared(prepared_dir, "test"), suite
        )
        card = modelcard.render(modelcard.Card(metadata, measured, result.history))
        extra_files.update({name: text.encode() for name, text in card.items()})
    # The profile and the model card are part of the model folder: published with it in one step,
    # covered by its hash.
    metadata = save_model(result.model, model_dir, metadata, extra_files=extra_files)
    write_run(model_dir, metadata, run)
    storage.write_text(storage.join(reports_dir, "history.csv"), history_csv(result.history))
    _write_json(
        storage.join(reports_dir, "metrics.json"),
        {
            "val_accuracy": round(result.final["val_accuracy"], 4),
            "val_loss": round(result.final["val_loss"], 4),
            "epochs": len(result.history),
            "train_seconds": round(result.seconds, 1),
            **{k: round(v, 4) for k, v in result.calibration.items()},
        },
    )
    return result, metadata, measured


def score_on_test(prepared_dir: str, model_dir: str) -> tuple[Split, Evaluation]:
    """Run the exported serving function (what the model server runs) over the test split."""
    test = load_prepared(prepared_dir, "test")
    with storage.local_dir_for_reading(model_dir) as local:
        verify_model_dir(local)
        probabilities = predict_probabilities(str(Path(local, SERVING_DIR)), test.images)
    return test, evaluate(probabilities, test.labels)


def evaluate_stage(prepared_dir: str, model_dir: str, reports_dir: str, params: SuiteParams) -> SuiteResult:
    """Run the model test suite on the exported model, write metrics and plots and the verdict, then
    apply the gate.

    The reports are written before the gate is checked, so a failing model leaves its evidence; the
    verdict goes into the model's folder, so whatever serves the model knows whether it passed.
    """
    test = load_prepared(prepared_dir, "test")
    # The published folder as a whole (on gs://, the version its pointer names), checked complete.
    with storage.local_dir_for_reading(model_dir) as local:
        metadata = verify_model_dir(local)
        result = model_tests.run_suite(serving_predictor(str(Path(local, SERVING_DIR))), test, params)
    write_reports(reports_dir, test, result, model_version=str(metadata["version"]))
    verdict.write(model_dir, model_tests.verdict_of(result, metadata))
    card = modelcard.Card(metadata, result, with_checks=True, run=read_run(model_dir, metadata))
    for name, text in modelcard.render(card).items():
        storage.write_text(storage.join(reports_dir, name), text)
    model_tests.check_gate(result)
    return result


def write_reports(
    reports_dir: str, test: Split, result: SuiteResult, model_version: str | None = None
) -> None:
    """The evaluate stage's files: a flat summary for `dvc metrics`, the detail, the plots' data.

    The detail names the model version it judged, so `pipeline run --skip-if-trained` reuses only a
    model whose own evaluation passed the gate.
    """
    evaluation = result.evaluation
    _write_json(storage.join(reports_dir, "metrics.json"), result.summary())
    _write_json(
        storage.join(reports_dir, "details.json"), {"model_version": model_version, **result.details()}
    )
    files = {
        "per_class.csv": model_tests.per_class_csv(result),
        "robustness.csv": model_tests.robustness_csv(result),
        "reliability.csv": calibration.reliability_csv(result.reliability),
        "confusion.csv": confusion_csv(test.labels, evaluation.predicted),
    }
    for name, text in files.items():
        storage.write_text(storage.join(reports_dir, name), text)
    storage.write_bytes(storage.join(reports_dir, "confusion_matrix.png"), confusion_png(evaluation))
    storage.write_bytes(
        storage.join(reports_dir, "reliability.png"),
        calibration.reliability_png(result.reliability, result.ece),
    )
