"""preprocess.json: the Preprocess record of how a saved model's inputs were made, its JSON round trip,
its validation (one line per malformed file), and that it reproduces the training loop's normalization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from precrop.nn.build import build_from_plan, layer_table
from precrop.width.allocate import dense_plan
from search.cli import main
from trainers.checkpoint import (
    MAX_PREPROCESS_BYTES,
    PREPROCESS_FILE,
    Preprocess,
    PreprocessError,
    load_model,
    read_preprocess,
    save_model,
)
from trainers.datasets import DataRequest, DataSet, FileSplit
from trainers.load import load_dataset
from trainers.loop import Trainer
from trainers.recipe import TrainConfig

GOOD = Preprocess("digits", tuple("0123456789"), (3, 8, 8), (0.2, 0.3, 0.4), (0.5, 0.25, 0.4))


def test_json_round_trip_and_fixed_fields() -> None:
    text = GOOD.to_json(indent=2)
    assert Preprocess.from_json(text) == GOOD
    data = json.loads(text)
    assert data["layout"] == "NCHW" and data["color"] == "RGB" and data["value_range"] == [0.0, 1.0]
    assert data["schema_version"] == 1 and data["resize"] is None and data["classes"][3] == "3"
    # integers in the file read as the same floats
    data["std"] = [1, 1, 1]
    assert Preprocess.from_json(json.dumps(data)).std == (1.0, 1.0, 1.0)


def test_from_a_resident_data_set_copies_its_statistics() -> None:
    data = load_dataset(DataRequest("digits", seed=0))
    spec = Preprocess.from_dataset(data)
    assert spec.mean == data.mean and spec.std == data.std and spec.input_shape == (3, 8, 8)
    assert spec.classes == tuple(str(i) for i in range(10)) and spec.resize is None and spec.dataset == "digits"
    assert 0.2 < spec.mean[0] < 0.4 and 0.3 < spec.std[0] < 0.5  # digits: mostly dark, in [0, 1] units


def test_file_data_records_the_evaluation_resize() -> None:
    split = FileSplit((("a.jpg", 0), ("b.jpg", 1)))
    data = DataSet("imagefolder", ("cat", "dog"), (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                   split, split, None)  # fmt: skip
    spec = Preprocess.from_dataset(data)
    assert spec.resize == 256 and spec.classes == ("cat", "dog")  # 224 / 0.875: resize, then center crop


def _good_dict() -> dict[str, Any]:
    return json.loads(GOOD.to_json())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"std": [0.5, 0.0, 0.4]}, "bad 'std'"),
        ({"std": [0.5, 0.25]}, "bad 'std'"),
        ({"mean": [0.2, float("nan"), 0.4]}, "bad 'mean'"),
        ({"mean": [0.2, True, 0.4]}, "bad 'mean'"),
        ({"classes": []}, "bad 'classes'"),
        ({"classes": ["a", 3]}, "bad 'classes'"),
        ({"classes": "0123456789"}, "bad 'classes'"),
        ({"input_shape": [3, 8]}, "bad 'input_shape'"),
        ({"input_shape": [3, 0, 8]}, "bad 'input_shape'"),
        ({"layout": "NHWC"}, "bad 'layout'"),
        ({"value_range": [0, 255]}, "bad 'value_range'"),
        ({"resize": -4}, "bad 'resize'"),
        ({"dataset": ""}, "bad 'dataset'"),
        ({"schema_version": 7}, "schema_version 7"),
        ({"extra": 1}, "unknown key 'extra'"),
        ({"mean": None}, "bad 'mean'"),
    ],
)
def test_a_bad_field_is_one_line_naming_it(change: dict[str, Any], expected: str) -> None:
    data = {**_good_dict(), **change}
    with pytest.raises(PreprocessError) as info:
        Preprocess.from_json(json.dumps(data))
    message = str(info.value)
    assert expected in message and "\n" not in message and message.startswith(PREPROCESS_FILE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON object"), ("{}", "schema_version None")],
)
def test_malformed_text_is_one_line(text: str, expected: str) -> None:
    with pytest.raises(PreprocessError, match=expected):
        Preprocess.from_json(text)


def test_a_missing_key_is_named() -> None:
    data = _good_dict()
    del data["std"]
    with pytest.raises(PreprocessError, match="has no 'std'"):
        Preprocess.from_json(json.dumps(data))


def test_a_huge_value_is_clipped_in_the_message() -> None:
    data = {**_good_dict(), "dataset": "x" * 5000}
    with pytest.raises(PreprocessError) as info:
        Preprocess.from_json(json.dumps(data))
    assert len(str(info.value)) < 200 and "5002 characters" in str(info.value)


def test_reading_a_directory(tmp_path: Path) -> None:
    assert read_preprocess(tmp_path) is None  # a model saved before preprocess.json existed
    (tmp_path / PREPROCESS_FILE).write_bytes(b"\xff\xfe{}")
    with pytest.raises(PreprocessError, match="not UTF-8"):
        read_preprocess(tmp_path)
    (tmp_path / PREPROCESS_FILE).write_bytes(b" " * (MAX_PREPROCESS_BYTES + 1))
    with pytest.raises(PreprocessError, match="larger than 8 MiB"):
        read_preprocess(tmp_path)


def test_save_model_writes_it_and_refuses_a_mismatch(tmp_path: Path) -> None:
    plan = dense_plan(layer_table("cifar_resnet20", 10, 8))
    model = build_from_plan(plan, seed=0)
    save_model(tmp_path, plan, model, GOOD)
    assert read_preprocess(tmp_path) == GOOD
    assert load_model(tmp_path)[0] == plan
    other = Preprocess("digits", ("a", "b"), (3, 8, 8), (0.5,) * 3, (0.5,) * 3)
    (tmp_path / "x").mkdir()
    with pytest.raises(PreprocessError, match=r"2 classes, but the plan's model .* has 10"):
        save_model(tmp_path / "x", plan, model, other)
    assert list((tmp_path / "x").iterdir()) == []  # checked before anything is written


def test_train_writes_a_spec_that_reproduces_the_loops_normalization(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--arch", "cifar_resnet20", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
            "--no-measure", "-o", str(run)]  # fmt: skip
    assert main(argv) == 0
    spec = read_preprocess(run)
    assert spec is not None and spec.dataset == "digits" and spec.classes == tuple(str(i) for i in range(10))
    _, model = load_model(run)
    data = load_dataset(DataRequest("digits", seed=0))
    # the loop's own normalized validation batches, against the spec applied to the raw uint8 images
    loop_inputs = torch.cat([x for x, _ in Trainer(model, data, TrainConfig()).batches(data.val, 1024).eval_batches()])
    images = data.val.images.float() / 255.0  # type: ignore[union-attr]
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    by_spec = (images - mean) / std
    assert float((by_spec - loop_inputs).abs().max()) < 1e-4
    with torch.no_grad():
        assert np.abs(model(by_spec).numpy() - model(loop_inputs).numpy()).max() < 1e-4
    # not a vacuous check: skipping the normalization changes the inputs a lot
    assert float((images - loop_inputs).abs().max()) > 0.5
