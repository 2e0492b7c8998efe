"""params.yaml is read one way: every block checked, a wrong value named in one line with what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge.pipeline import Params, ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["params.yaml", "params-quick.yaml"])
def test_the_repository_params_files_are_valid_and_read_as_written(name: str) -> None:
    written = yaml.safe_load((REPO / name).read_text())
    params = load_params(REPO / name)
    # Every key of the file is read, with the value the file gives it (nothing dropped or renamed).
    assert params.as_dict() == {
        block: _with_defaults(written[block], params.as_dict()[block]) for block in written
    }
    assert params.train.epochs == written["train"]["epochs"]
    assert params.train.model.filters == tuple(written["train"]["model"]["filters"])
    assert next((n, p.kind, p.amount) for n, p in params.evaluate.invariance.items()) == (
        "shift_1px",
        "shift",
        1,
    )


def _with_defaults(written: dict, read: dict) -> dict:  # type: ignore[type-arg]
    return {key: written.get(key, value) for key, value in read.items()}


def test_blocks_left_out_or_empty_take_every_default(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("train:\nevaluate: {min_accuracy: 0.5}\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.train == Params().train and params.prepare == Params().prepare
    assert params.evaluate.min_accuracy == 0.5 and params.evaluate.invariance == {}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # An unknown key, at any depth, with the keys that are known there.
        ("train: {epoch: 3}", "params.yaml: train.epoch = 3: unknown key; the keys here are seed, epochs,"),
        (
            "trian: {epochs: 3}",
            "params.yaml: trian: unknown key; the keys here are prepare, train, evaluate, gate",
        ),
        (
            "train: {model: {layers: 3}}",
            "params.yaml: train.model.layers = 3: unknown key; the keys here are filters,",
        ),
        # A value out of its range.
        ("train: {epochs: 0}", "params.yaml: train.epochs = 0: must be >= 1"),
        ("train: {contrast: 1.5}", "params.yaml: train.contrast = 1.5: must be < 1"),
        ("train: {noise: -1}", "params.yaml: train.noise = -1: must be >= 0"),
        ("gate: {class_recall: {Shirt: 1.5}}", "params.yaml: gate.class_recall.Shirt = 1.5: must be <= 1"),
        (
            "evaluate: {invariance: {s: {shift: 1, floor: 2}}}",
            "params.yaml: evaluate.invariance.s.floor = 2: must be <= 1",
        ),
        # A value of the wrong type, or not one of the choices.
        ("train: {epochs: many}", 'params.yaml: train.epochs = "many": must be a valid integer'),
        ("train: {flip: 1}", "params.yaml: train.flip = 1: must be a valid boolean"),
        (
            "train: {model: {head: pool}}",
            "params.yaml: train.model.head = \"pool\": must be 'flatten' or 'gap'",
        ),
        (
            "train: {model: {bfloat16: 'yes'}}",
            'params.yaml: train.model.bfloat16 = "yes": must be true, false or auto',
        ),
        (
            "train: {model: {convs_per_block: 0}}",
            "params.yaml: train.model.convs_per_block = 0: must be a whole number >= 1, or one per block",
        ),
        (
            "train: {model: {filters: [8, 16, 32], convs_per_block: [1, 2]}}",
            "params.yaml: train.model.convs_per_block = [1, 2]: has 2 entries for 3 blocks",
        ),
        (
            "evaluate: {invariance: {s: {shift: 1.5, floor: 0.5}}}",
            "params.yaml: evaluate.invariance.s.shift = 1.5: must be a valid integer",
        ),
        # Rules that span keys.
        (
            "evaluate: {invariance: {s: {shift: 1, brightness: 2, floor: 0.5}}}",
            'params.yaml: evaluate.invariance.s = {"shift": 1, "brightness": 2, "floor": 0.5}: '
            "must hold exactly one of shift, brightness, contrast, noise_sd and a floor, "
            "found shift, brightness",
        ),
        (
            "evaluate: {invariance: {s: {shift: 1}}}",
            "params.yaml: evaluate.invariance.s.floor: missing; add it",
        ),
        (
            "gate: {class_recall: {Shirts: 0.5}}",
            'params.yaml: gate.class_recall = {"Shirts": 0.5}: '
            "unknown class(es) Shirts; the classes are T-shirt/top,",
        ),
        # One place for each floor: the class recall floor is the test suite's, evaluate.min_class_recall.
        (
            "gate: {min_class_recall: 0.7}",
            "params.yaml: gate.min_class_recall = 0.7: "
            "unknown key; the keys here are max_regression, class_recall",
        ),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_key_the_value_and_what_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, line: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(text + "\n")
    with pytest.raises(ParamsError) as caught:
        load_params("params.yaml")
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(line), message


def test_each_wrong_value_gets_its_own_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        "prepare: {validation_size: 0}\ntrain: {epochs: 0, batch_size: 0}\n"
    )
    with pytest.raises(ParamsError) as caught:
        load_params(tmp_path / "params.yaml")
    assert [line.split(": ", 1)[1] for line in str(caught.value).splitlines()] == [
        "prepare.validation_size = 0: must be >= 1",
        "train.epochs = 0: must be >= 1",
        "train.batch_size = 0: must be >= 1",
    ]


def test_a_file_that_is_not_a_mapping_of_blocks_is_refused(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("- train\n")
    with pytest.raises(
        ParamsError, match="must be a mapping of stage blocks: prepare, train, evaluate, gate"
    ):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="not found; run from the repository root or pass --params"):
        load_params(tmp_path / "missing.yaml")
