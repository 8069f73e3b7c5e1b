"""The fast path on a GPU (bf16 autocast, channels-last, data resident on the device). Marker: gpu."""

from __future__ import annotations

import pytest
import torch

from trainers.datasets import DataRequest
from trainers.load import load_dataset
from trainers.loop import train
from trainers.measure import measure_model
from trainers.recipe import TrainConfig

from .test_loop import fresh_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_digits_on_cuda_reaches_90_percent() -> None:
    data = load_dataset(DataRequest("digits", seed=0))
    result = train(fresh_model(), data, TrainConfig(epochs=10, batch_size=64, device="cuda"))
    assert result.status == "completed"
    assert result.final["val_acc"] >= 0.90


def test_compiled_model_trains_on_cuda() -> None:
    data = load_dataset(DataRequest("synthetic", seed=0))
    result = train(fresh_model(), data, TrainConfig(epochs=2, batch_size=32, device="cuda", compile=True))
    assert result.status == "completed"
    assert result.final["val_acc"] >= 0.5


def test_measure_model_times_cuda_too() -> None:
    model = fresh_model()
    result = measure_model(model, (3, 32, 32), batch_sizes=(1,), max_seconds=0.5)
    assert result["latency_cuda_b1_ms"] > 0 and result["latency_cpu_b1_ms"] > 0
