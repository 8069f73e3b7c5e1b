"""Latency on the deployment runtime (search/run/runtimes.py): every runtime times the model it is handed,
ONNX Runtime runs the exported graph (checked against PyTorch's output), and where a value was timed is part
of what it is cached by."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from precrop.methods.registry import realize
from precrop.nn.build import layer_table
from precrop.width.allocate import AllocationRequest
from search.run import runtimes
from search.run.latency import Retimed, plan_fingerprint, retime_plans, time_models
from search.spec.config import LATENCY_RUNTIMES
from trainers.measure import time_call


class Tiny(nn.Module):
    """conv-bn-relu, pool, linear: compiles and exports in seconds."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture(autouse=True)
def one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield None
    torch.set_num_threads(before)


@pytest.mark.parametrize("runtime", LATENCY_RUNTIMES)
def test_every_runtime_times_the_model_it_is_handed(runtime: str) -> None:
    times = time_models([Tiny(8), Tiny(32)], [(3, 16, 16)] * 2, batch=4, rounds=1, runtime=runtime)
    assert len(times) == 2 and all(np.isfinite(t) and t > 0 for t in times), times  # no comparison: no clock


def test_onnxruntime_runs_the_exported_graph_of_the_model() -> None:
    import onnxruntime as ort

    from search.results.export import export_model

    model = Tiny(8).eval()
    blob = export_model(model, (3, 16, 16), "onnx", {})
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.allclose(session.run(None, {session.get_inputs()[0].name: x})[0], expected, atol=1e-5)


def test_onnxruntime_is_timed_on_the_cpu_only() -> None:
    with pytest.raises(ValueError, match="onnxruntime latency is timed on the CPU"):
        runtimes.prepared_call(Tiny(8), (3, 16, 16), 1, "onnxruntime", torch.device("cuda"))


def test_where_a_value_was_timed_is_part_of_its_fingerprint() -> None:
    plan = realize("uniform", layer_table("cifar_resnet20"), AllocationRequest(macs=0.5), None).plan
    prints = {plan_fingerprint(plan, 1, runtime, device) for runtime in LATENCY_RUNTIMES
              for device in ("cpu", "cuda")}  # fmt: skip
    assert len(prints) == 6
    assert plan_fingerprint(plan, 1) == plan_fingerprint(plan, 1, "eager", "cpu")


def test_the_end_of_search_retiming_uses_the_searchs_runtime() -> None:
    plan = realize("uniform", layer_table("cifar_resnet20"), AllocationRequest(macs=0.3), None).plan
    (value,) = retime_plans([plan], batch=1, threads=1, runtime="onnxruntime")
    assert np.isfinite(value) and value > 0
    assert Retimed(1, 2, 0.5, "onnxruntime").describe() == (
        "re-timed the CPU latency (onnxruntime) of 1 distinct plan(s) of 2 completed run(s) on the idle machine "
        "(0.5 s)"
    )


def test_time_call_takes_the_median_of_at_least_three_calls() -> None:
    calls = []
    timing = time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5, max_seconds=0.0)
    assert timing.repeats == 3 and len(calls) == 5  # 2 warm-up calls, then 3 timed ones (the floor)
