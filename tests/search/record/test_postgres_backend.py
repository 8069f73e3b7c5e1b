"""A search tracked by an MLflow server whose backend store is a real PostgreSQL, as on a cluster head.

Opt-in (`pytest -m postgres`). The test runs its own throwaway cluster (initdb into a temporary directory,
127.0.0.1 on a free port, its own socket directory), so a system PostgreSQL on 5432 is neither needed nor
touched. As root the cluster belongs to the `postgres` user (initdb refuses root). Skips without the
PostgreSQL server binaries or psycopg2."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.search.conftest import TINY_CONFIG, write_config
from tests.search.servers import free_port, mlflow_server, run_search_into

pytestmark = [pytest.mark.postgres, pytest.mark.ray]

TRIALS = 3
DATABASE = "mlflow"
SUPERUSER = "postgres"
# SQLAlchemy >= 2.1 maps a bare postgresql:// to psycopg 3; the dev extra installs psycopg2-binary
SCHEME = "postgresql+psycopg2"


@dataclass(frozen=True)
class Postgres:
    """A running throwaway PostgreSQL: where to reach it and its log."""

    port: int
    log: Path

    def uri(self, database: str) -> str:
        """SQLAlchemy URI of `database` on this server, over TCP."""
        return f"{SCHEME}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def log_tail(self) -> str:
        """The end of the server log, for failure messages."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"


def _bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: `pg_config --bindir`, else Debian's newest /usr/lib/postgresql."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += [Path(p) for p in debian if Path(p).parent.name.isdigit()]
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


def _as_owner(command: list[str]) -> list[str]:
    """`command` run as the cluster's owner: the `postgres` user when we are root, else ourselves."""
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(_as_owner(command), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}"


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb + pg_ctl start a cluster on 127.0.0.1:<free port> in a temporary directory; stop and remove it."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are absent (apt-get install postgresql)")
    if os.geteuid() == 0 and not (shutil.which("runuser") and _user_exists(SUPERUSER)):
        pytest.skip(f"running as root needs runuser and a `{SUPERUSER}` user to own the cluster")
    # outside pytest's tmp_path: as root that is mode 0700 and the `postgres` user could not enter it
    base = Path(tempfile.mkdtemp(prefix="precrop-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, user=SUPERUSER, group=None)
    data, log = base / "data", base / "postgres.log"
    port = free_port()
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale",
              "--no-sync", "--no-instructions"], base)  # fmt: skip
        settings = {"listen_addresses": "'127.0.0.1'", "port": str(port), "unix_socket_directories": f"'{base}'",
                    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}  # fmt: skip
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# precrop test cluster\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        started = True  # from here on pg_ctl stop is due, even when start fails half-way
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start"], base)
        yield Postgres(port, log)
    finally:
        if started:
            subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), cwd=base,
                           capture_output=True, timeout=60, check=False)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _query(postgres: Postgres, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=postgres.port, user=SUPERUSER, dbname=DATABASE)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    finally:
        connection.close()


def _create_database(postgres: Postgres, name: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=postgres.port, user=SUPERUSER, dbname="postgres")
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def test_search_runs_land_in_postgresql(tmp_path: Path) -> None:
    """Parent and trial runs end (FINISHED, or KILLED when ASHA stopped them) with metrics, seen both through
    MlflowClient and in PostgreSQL's own runs/metrics/tags tables."""
    pytest.importorskip("psycopg2", reason="psycopg2 is absent (pip install -e '.[dev]')")
    from mlflow import MlflowClient

    with postgres_server() as postgres:
        _create_database(postgres, DATABASE)
        with mlflow_server(tmp_path, postgres.uri(DATABASE)) as url:
            # ray.address local: an embedded Ray, never a cluster that `ray start` left recorded on this machine
            config = {**TINY_CONFIG, "search": {**TINY_CONFIG["search"], "trials": TRIALS}, "ray": {"address": "local"}}
            result = run_search_into(tmp_path, write_config(tmp_path, config, "tiny.yaml"), url)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + postgres.log_tail()

            client = MlflowClient(url)
            experiment = client.get_experiment_by_name(config["name"])
            assert experiment is not None
            runs = client.search_runs([experiment.experiment_id])
            parents = [r for r in runs if r.data.tags.get("precrop.role") == "search"]
            trials = [r for r in runs if r.data.tags.get("precrop.role") == "trial"]
            assert len(parents) == 1 and len(trials) == TRIALS, [(r.info.run_name, r.data.tags) for r in runs]
            parent = parents[0]
            assert parent.info.status == "FINISHED" and parent.info.end_time is not None
            assert {"trials", "pareto_size"} <= set(parent.data.metrics), parent.data.metrics
            assert "pareto.png" in {f.path for f in client.list_artifacts(parent.info.run_id)}
            for trial in trials:
                assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
                assert trial.info.status in ("FINISHED", "KILLED"), (trial.info.run_name, trial.info.status)
                assert trial.info.end_time is not None, trial.info.run_name
                assert {"val_acc", "macs", "params", "epoch"} <= set(trial.data.metrics), trial.data.metrics
            assert any(t.info.status == "FINISHED" for t in trials)

        # the same rows, read from PostgreSQL itself (the MLflow server is stopped by now)
        table = _query(postgres, "SELECT run_uuid, status, end_time FROM runs WHERE experiment_id = %s",
                       int(experiment.experiment_id))  # fmt: skip
        mlflow_view = {r.info.run_id: (r.info.status, r.info.end_time) for r in runs}
        assert {row[0]: (row[1], row[2]) for row in table} == mlflow_view
        children = _query(postgres, "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = %s",
                          parent.info.run_id)  # fmt: skip
        assert {row[0] for row in children} == {t.info.run_id for t in trials}
        with_val_acc = _query(postgres, "SELECT DISTINCT run_uuid FROM metrics WHERE key = 'val_acc' "
                              "AND run_uuid = ANY(%s)", [t.info.run_id for t in trials])  # fmt: skip
        assert len(with_val_acc) == TRIALS
