"""Commands that only read MLflow never create a tracking store: a missing one is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import main
from search.record.tracking import local_store_path


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:///mlflow.db", "mlflow.db"),
        ("sqlite:////abs/mlflow.db", "/abs/mlflow.db"),
        ("file:///abs/mlruns", "/abs/mlruns"),
        ("file:./mlruns", "./mlruns"),
        ("./mlruns", "./mlruns"),
        ("http://127.0.0.1:5000", None),
        ("databricks", None),
    ],
)
def test_local_store_path(uri: str, path: str | None) -> None:
    assert local_store_path(uri) == (None if path is None else Path(path))


@pytest.mark.parametrize(
    "argv",
    [
        ["pareto", "--experiment", "x"],
        ["export", "0123456789abcdef", "--format", "onnx"],
        ["doctor", "--storage-path", "ray_results"],
    ],
    ids=["pareto", "export", "doctor"],
)
@pytest.mark.parametrize("uri", ["sqlite:///sub/new.db", "file:sub/mlruns"])
def test_a_missing_store_is_reported_and_not_created(
    argv: list[str], uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("precrop: error: no MLflow tracking store at ") and "nothing was created" in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
