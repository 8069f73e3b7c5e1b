"""Joining Ray: an address where nothing listens is refused at once, before Ray's minutes of reconnecting."""

from __future__ import annotations

import socket

import pytest

from search.run.cluster import _answers, check_ray_can_run, init_ray, ray_address
from search.spec.config import ConfigError
from search.spec.parse import parse_config


def closed_port() -> int:
    """A loopback port that was free a moment ago (nothing listens on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_answers_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _answers(f"127.0.0.1:{port}")
        assert _answers(f"ray://127.0.0.1:{port}")  # Ray Client's form
    assert not _answers(f"127.0.0.1:{closed_port()}")
    assert not _answers("no-port-here")


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}"])
def test_an_address_with_nothing_listening_is_one_config_error(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def must_not_run(**_: object) -> None:
        raise AssertionError("ray.init was called for an address where nothing listens")

    monkeypatch.setattr(ray, "init", must_not_run)
    address = form.format(closed_port())
    config = parse_config({"ray": {"address": address}})
    with pytest.raises(ConfigError, match="nothing answers there") as error:
        init_ray(config, ray_address(config))
    assert len(str(error.value).splitlines()) == 1 and address in str(error.value)
    with pytest.raises(ConfigError, match="nothing answers there") as before:  # the check before MLflow is touched
        check_ray_can_run(config, ray_address(config))
    assert str(before.value) == str(error.value)


def test_a_trial_larger_than_the_machine_is_refused_before_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from search.infra import ray_private

    monkeypatch.setattr(ray_private, "embedded_ray_cpus", lambda: 2.0)
    with pytest.raises(ConfigError, match=r"^resources.cpu: each trial asks for 3.0 CPUs, this machine has 2.0$"):
        check_ray_can_run(parse_config({"resources": {"cpu": 3}}), None)
    check_ray_can_run(parse_config({"resources": {"cpu": 2}}), None)
    check_ray_can_run(parse_config({"resources": {"cpu": 64}}), "auto")  # a cluster's CPUs are counted once joined
