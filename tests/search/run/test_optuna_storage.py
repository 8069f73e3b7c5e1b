"""The search's Optuna study is stored where optuna-dashboard and `optuna best-trials` read it: sqlite
beside mlflow.db by default, never MLflow's own database, one trial per Tune trial across `--resume`.

Config and resolution first, then the resume bookkeeping driven by hand (no Ray), then one real search
whose study is read back three ways: `optuna.load_study`, the optuna CLI, optuna-dashboard's WSGI app.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import re
import sqlite3
import subprocess
import sys
import wsgiref.util
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from optuna.trial import FrozenTrial, TrialState
from ray import tune

from search.record.records import SearchRecord, optuna_study_name, tune_state_saved
from search.run.launch import optuna_study
from search.run.searcher import ParetoOptunaSearch, make_sampler, objectives, open_storage, storage_url
from search.run.summary import optuna_hint
from search.spec.config import OPTUNA_STORAGE_ENV, ConfigError
from search.spec.parse import load_config, parse_config
from tests.search.conftest import (
    EMPTY_TUNE_STATE,
    TINY_CONFIG,
    SharedSearch,
    copy_search_script,
    kill_search_when,
    run_search_script,
    search_runs,
    write_config,
)

# --- the config key and where "auto" puts the study ---

ACCEPTED = ["auto", "none", "sqlite:///optuna.db", "postgresql+psycopg2://me@/optuna?host=/var/run/postgresql",
            "mysql+pymysql://me@db.internal:3306/optuna"]  # fmt: skip


@pytest.mark.parametrize("value", ACCEPTED)
def test_the_config_accepts_auto_none_and_database_urls(tmp_path: Path, value: str) -> None:
    config = load_config(write_config(tmp_path, {"name": "x"}), [f"search.optuna_storage={value}"])
    assert config.search.optuna_storage == value
    assert parse_config({}).search.optuna_storage == "auto"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("http://127.0.0.1:5000", "must be auto, none or a database URL (sqlite:///FILE, postgresql://..., mysql://"),
        ("not a url", "it is not a URL"),
        ("postgresql://me:hunter2@db/optuna", "must not hold a password"),
        ("sqlite://", "must name a file"),
        ("sqlite:///:memory:", "must name a file"),
        ("sqlite:///{study}.db", "must not contain { or }"),
        ("sqlite:///" + "a" * 5000, "must be at most 4096 characters"),
    ],
)
def test_the_config_refuses_what_optuna_cannot_store_in_one_line(tmp_path: Path, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, {"name": "x", "search": {"optuna_storage": value}}))
    message = str(caught.value)
    assert message.startswith("search.optuna_storage: ") and says in message, message
    assert "\n" not in message and len(message) < 200 and "hunter2" not in message


def _config(value: str = "auto") -> Any:
    return parse_config({"search": {"optuna_storage": value}})


def test_auto_is_a_sqlite_file_beside_a_local_mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OPTUNA_STORAGE_ENV, raising=False)
    beside = f"sqlite:///{tmp_path.resolve()}/optuna.db"
    assert storage_url(_config(), f"sqlite:///{tmp_path}/mlflow.db") == beside
    assert storage_url(_config(), f"file:{tmp_path}/mlruns") == beside
    named_so = f"sqlite:///{tmp_path.resolve()}/optuna-optuna.db"  # MLflow's own file is called optuna.db
    assert storage_url(_config(), f"sqlite:///{tmp_path}/optuna.db") == named_so
    assert storage_url(_config(), "http://127.0.0.1:5000") is None  # a tracking server: memory, unless told
    assert storage_url(_config("none"), f"sqlite:///{tmp_path}/mlflow.db") is None

    cluster = "postgresql+psycopg2://me@/optuna?host=/var/run/postgresql"  # what cluster/setup_head.sh exports
    monkeypatch.setenv(OPTUNA_STORAGE_ENV, cluster)
    assert storage_url(_config(), "http://10.0.0.5:5000") == cluster
    assert storage_url(_config("none"), "http://10.0.0.5:5000") is None  # the config's own choice wins
    monkeypatch.setenv(OPTUNA_STORAGE_ENV, "none")
    assert storage_url(_config(), f"sqlite:///{tmp_path}/mlflow.db") is None
    monkeypatch.setenv(OPTUNA_STORAGE_ENV, "postgresql://me:hunter2@db/optuna")
    with pytest.raises(ConfigError, match=r"^PRECROP_OPTUNA_STORAGE: must not hold a password"):
        storage_url(_config(), "http://10.0.0.5:5000")


def test_an_explicit_storage_is_never_mlflows_own_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mlflow_db = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert storage_url(_config("sqlite:///studies.db"), mlflow_db) == f"sqlite:///{tmp_path.resolve()}/studies.db"
    with pytest.raises(ConfigError, match=r"^search.optuna_storage: is MLflow's own database; .*alembic_version"):
        storage_url(_config("sqlite:///mlflow.db"), mlflow_db)  # the same file, spelled relative
    server = "postgresql://me@db.internal:5432/mlflow"
    with pytest.raises(ConfigError, match="is MLflow's own database"):
        storage_url(_config(server), server)
    other = "postgresql://me@db.internal:5432/optuna"
    assert storage_url(_config(other), server) == other
    with pytest.raises(ConfigError, match=r"the folder of the sqlite file does not exist: .*nowhere"):
        storage_url(_config("sqlite:///nowhere/optuna.db"), mlflow_db)
    assert not (tmp_path / "nowhere").exists() and list(tmp_path.iterdir()) == []  # nothing opened or created


def _tables(database: Path) -> set[str]:
    with closing(sqlite3.connect(database)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_mlflow_and_optuna_both_keep_an_alembic_version_table(tmp_path: Path) -> None:
    """Why the study never goes into MLflow's database: both version their schema in `alembic_version`,
    and Optuna refuses a database whose revision is MLflow's."""
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert "alembic_version" in _tables(tmp_path / "mlflow.db") & _tables(tmp_path / "optuna.db")
    assert {"studies", "trials"} <= _tables(tmp_path / "optuna.db") and "runs" in _tables(tmp_path / "mlflow.db")
    with pytest.raises(ConfigError) as caught:
        open_storage(f"sqlite:///{tmp_path / 'mlflow.db'}")
    message = str(caught.value)
    assert message.startswith("cannot open the Optuna storage sqlite:///") and "\n" not in message


# --- the resume bookkeeping, driven as Tune drives it (no Ray cluster) ---

SPACE = {"lr": tune.loguniform(1e-3, 1e-1), "wd": tune.uniform(0.0, 0.5)}
POINTS = [{"lr": 0.002, "wd": 0.1}, {"lr": 0.05, "wd": 0.2}]
FULL = {"trial_complete": 1, "epoch": 2}


def _stored_searcher(url: str) -> ParetoOptunaSearch:
    config = parse_config({"search": {"seed": 5}})
    metrics, modes = objectives(config)
    return ParetoOptunaSearch(metric=metrics, mode=modes, sampler=make_sampler(config), points_to_evaluate=POINTS,
                              epochs=2, study_name="s-1", storage=open_storage(url),
                              study_attrs={"precrop.search": "s"})  # fmt: skip


def _by_trial_id(trials: Iterable[FrozenTrial]) -> dict[str, FrozenTrial]:
    return {t.user_attrs["precrop.trial_id"]: t for t in trials}


def test_a_restored_searcher_keeps_one_stored_trial_per_tune_trial(tmp_path: Path) -> None:
    """Killed after Tune's last save of the searcher, when Optuna had since stored one trial's result (b)
    and asked one more trial (d, which Tune then lost): restored as Tune restores it, the searcher does
    not tell b again, and the Tune trial that replaces d gets d's stored trial."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = _stored_searcher(url)
    as_tuner_saved_it = pickle.dumps(searcher)  # tuner.pkl: the searcher before its search space is set
    searcher.set_search_properties(None, None, SPACE)
    asked = {tid: searcher.suggest(tid) for tid in ("a", "b", "c")}
    assert [asked["a"], asked["b"]] == POINTS  # the startup points come first
    searcher.on_trial_complete("a", {"val_acc": 0.7, "macs": 5.0, **FULL})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last save before the kill
    searcher.on_trial_complete("b", {"val_acc": 0.8, "macs": 9.0, **FULL})
    lost = searcher.suggest("d")

    resumed: ParetoOptunaSearch = pickle.loads(as_tuner_saved_it)
    resumed.restore(str(tmp_path / "searcher.pkl"))  # Tuner.restore: no search space is set again
    resumed.on_trial_complete("b", {"val_acc": 0.1, "macs": 1.0, **FULL})  # b ran again after the resume
    assert resumed.suggest("e") == lost  # e gets d's stored trial
    resumed.on_trial_complete("c", {"val_acc": 0.9, "macs": 20.0, "trial_complete": 0, "epoch": 1})
    resumed.on_trial_complete("e", None, error=True)
    assert resumed.suggest("f") is not None  # nothing left to hand out: a new Optuna trial
    resumed.on_trial_complete("f", {"val_acc": 0.6, "macs": 2.0, **FULL})

    study = optuna.load_study(study_name="s-1", storage=url)
    trials = _by_trial_id(study.trials)
    assert len(study.trials) == 5 and sorted(trials) == ["a", "b", "c", "e", "f"]
    assert [t.number for t in (trials["a"], trials["b"], trials["c"], trials["e"], trials["f"])] == [0, 1, 2, 3, 4]
    assert trials["b"].values == [0.8, 9.0]  # told once, before the kill
    assert trials["c"].values == [0.9, 20.0] and trials["c"].constraints == {"untrained_fraction": 0.5}
    assert trials["e"].state == TrialState.FAIL and trials["e"].params == lost
    outcomes = {tid: t.user_attrs["precrop.outcome"] for tid, t in trials.items()}
    assert outcomes == {"a": "completed", "b": "completed", "c": "stopped", "e": "failed", "f": "completed"}
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_acc", "macs"] and study.user_attrs == {"precrop.search": "s"}
    assert sorted(t.values for t in study.best_trials) == [[0.6, 2.0], [0.7, 5.0], [0.8, 9.0]]


def test_a_search_started_over_hands_out_what_its_killed_start_stored(tmp_path: Path) -> None:
    """Killed before Tune saved any experiment state, a search starts over under the same parent run, so a
    fresh searcher opens the same stored study: its startup points are not enqueued again, and the trials
    the killed start stored (one of them killed halfway through its parameters) go to the new Tune trials."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = _stored_searcher(url)
    first.set_search_properties(None, None, SPACE)
    asked = [first.suggest("a"), first.suggest("b")]
    half = optuna.load_study(study_name="s-1", storage=url).ask()
    half_lr = half.suggest_float("lr", 1e-3, 1e-1, log=True)  # the kill came before its "wd"

    again = _stored_searcher(url)
    again.set_search_properties(None, None, SPACE)
    got = [again.suggest(tid) for tid in ("w", "x", "y", "z")]
    assert got[:2] == asked == POINTS
    assert got[2] is not None and got[2]["lr"] == half_lr and 0 <= got[2]["wd"] <= 0.5  # completed
    study = optuna.load_study(study_name="s-1", storage=url)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 4  # no second copy of the startup points
    assert [t.user_attrs["precrop.trial_id"] for t in study.trials] == ["w", "x", "y", "z"]
    assert [t.params for t in study.trials][:3] == got[:3]


def test_a_search_resumes_from_tune_only_once_tune_saved_an_experiment_state(tmp_path: Path) -> None:
    """tuner.pkl alone (Tune writes it before the first trial) restores neither the search space nor the
    number of trials: the driver starts such a search over, and the stored study carries on (above)."""
    folder = tmp_path / "s-1"
    folder.mkdir()
    assert not tune_state_saved(str(folder))
    (folder / "tuner.pkl").write_bytes(pickle.dumps({}))
    assert not tune_state_saved(str(folder))
    (folder / "experiment_state-2026-11-30_06-00-00.json").write_text(EMPTY_TUNE_STATE)
    assert tune_state_saved(str(folder))
    (folder / "tuner.pkl").unlink()
    assert not tune_state_saved(str(folder))


def test_none_keeps_the_study_in_memory_and_prints_no_optuna_commands() -> None:
    record = SearchRecord("s-1", "/r/s-1", "sqlite:////r/mlflow.db", "1", "p" * 32, {})
    assert optuna_study(record) == {}
    metrics, modes = objectives(parse_config({}))
    searcher = ParetoOptunaSearch(metric=metrics, mode=modes, **optuna_study(record))
    searcher.set_search_properties(None, None, SPACE)
    assert isinstance(searcher._ot_study._storage, optuna.storages.InMemoryStorage)
    assert optuna_hint(record) == []
    stored = SearchRecord("s-1", "/r/s-1", "sqlite:////r/mlflow.db", "1", "p" * 32, {}, None,
                          "sqlite:////r/optuna.db", optuna_study_name("s-1", "p" * 32))  # fmt: skip
    assert optuna_hint(stored)[1:] == [
        "  optuna-dashboard sqlite:////r/optuna.db    then browse http://127.0.0.1:8080",
        f"  optuna best-trials --study-name s-1-{'p' * 32} --storage sqlite:////r/optuna.db",
    ]


# --- one real search, read back by load_study, the optuna CLI and optuna-dashboard ---


@dataclass
class Searched:
    folder: Path
    stdout: str
    parent: Run
    children: list[Run]

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.folder.resolve() / 'optuna.db'}"


def _runs(folder: Path, experiment_name: str) -> tuple[Run, list[Run]]:
    runs = search_runs(folder, experiment_name)
    (parent,) = runs.parents
    return parent, runs.children


@pytest.fixture(scope="module")
def searched(quickstart_search: SharedSearch) -> Searched:
    """The shared search (tests/search/conftest.py): with no storage configured, its Optuna study is stored
    beside the config by default."""
    return Searched(
        quickstart_search.folder,
        quickstart_search.output.stdout,
        quickstart_search.runs.parents[0],
        quickstart_search.runs.children,
    )


@pytest.mark.ray
def test_the_parent_run_and_the_summary_name_the_stored_study(searched: Searched) -> None:
    tags = searched.parent.data.tags
    name = optuna_study_name(tags["precrop.search"], searched.parent.info.run_id)
    assert tags["precrop.optuna_storage"] == searched.storage and tags["precrop.optuna_study"] == name
    assert f"\n  optuna-dashboard {searched.storage}    then browse http://127.0.0.1:8080\n" in searched.stdout
    assert f"\n  optuna best-trials --study-name {name} --storage {searched.storage}\n" in searched.stdout
    assert (searched.folder / "optuna.db").is_file() and (searched.folder / "mlflow.db").is_file()


def _study(searched: Searched) -> optuna.Study:
    return optuna.load_study(study_name=searched.parent.data.tags["precrop.optuna_study"], storage=searched.storage)


@pytest.mark.ray
def test_every_trial_is_stored_once_with_the_values_mlflow_holds(searched: Searched) -> None:
    study = _study(searched)
    assert len(study.trials) == 8 == len(searched.children)  # configs/quickstart.yaml's search.trials
    trials = _by_trial_id(study.trials)
    runs = {r.data.tags["precrop.trial_id"]: r for r in searched.children}
    assert trials.keys() == runs.keys()
    outcomes = set()
    for trial_id, run in runs.items():
        trial, outcome = trials[trial_id], run.data.tags["precrop.outcome"]
        outcomes.add(outcome)
        assert trial.user_attrs["precrop.outcome"] == outcome
        if outcome in ("failed", "diverged"):
            assert trial.state == TrialState.FAIL
            continue
        assert trial.state == TrialState.COMPLETE
        assert trial.values == pytest.approx([run.data.metrics["val_acc"], run.data.metrics["macs"]], rel=1e-12)
        untrained = trial.constraints["untrained_fraction"]
        assert untrained == 0 if outcome == "completed" else untrained > 0
    assert {"completed", "stopped"} <= outcomes, "ASHA stopped no trial: the test lost its point"
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_acc", "macs"]
    assert study.user_attrs["mlflow.parentRunId"] == searched.parent.info.run_id


@pytest.mark.ray
def test_optuna_best_trials_prints_the_front_mlflow_tagged(searched: Searched) -> None:
    optuna_cli = Path(sys.executable).with_name("optuna")
    name = searched.parent.data.tags["precrop.optuna_study"]
    printed = subprocess.run(
        [str(optuna_cli), "best-trials", "--study-name", name, "--storage", searched.storage, "-f", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    numbers = {row["number"] for row in json.loads(printed.stdout)}
    by_number = {t.number: t.user_attrs["precrop.trial_id"] for t in _study(searched).trials}
    front = {r.data.tags["precrop.trial_id"] for r in searched.children if r.data.tags.get("pareto") == "true"}
    assert front and {by_number[n] for n in numbers} == front


def _dashboard_get(app: Callable[..., Iterable[bytes]], path: str) -> tuple[str, Any]:
    """GET `path` from a WSGI app in this process: (status, JSON body)."""
    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET", QUERY_STRING="")
    environ["wsgi.input"] = io.BytesIO()
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    return statuses[0], json.loads(body)


@pytest.mark.ray
def test_optuna_dashboard_lists_the_study_and_its_trials(searched: Searched) -> None:
    import optuna_dashboard

    app = optuna_dashboard.wsgi(searched.storage)
    status, listed = _dashboard_get(app, "/api/studies")
    assert status == "200 OK"
    name = searched.parent.data.tags["precrop.optuna_study"]
    (summary,) = [s for s in listed["study_summaries"] if s["study_name"] == name]
    assert summary["directions"] == ["maximize", "minimize"]
    status, detail = _dashboard_get(app, f"/api/studies/{summary['study_id']}")
    assert status == "200 OK"
    assert len(detail["trials"]) == len(searched.children) and detail["objective_names"] == ["val_acc", "macs"]
    shown = {attr["value"] for t in detail["trials"] for attr in t["user_attrs"] if attr["key"] == "precrop.trial_id"}
    assert shown == {r.data.tags["precrop.trial_id"] for r in searched.children}


# --- a real kill and --resume ---


def _stored_states(folder: Path) -> list[str]:
    """The states of every stored Optuna trial, read straight from SQLite ([] before the tables exist)."""
    database = folder / "optuna.db"
    if not database.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            return [row[0] for row in db.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # tables not created yet, or busy
        return []


# when to kill the driver: the first moment the stored trials show it (read from optuna.db, never a sleep)
KILL_AT: dict[str, Callable[[list[str]], bool]] = {
    "two trials asked": lambda states: states.count("RUNNING") >= 2,  # often before Tune saved any state
    "one told, one running": lambda states: "COMPLETE" in states and "RUNNING" in states,
    # and then Tune's copy of its state in storage cut short, as a kill during the copy leaves it
    "one told, one running, state cut short": lambda states: "COMPLETE" in states and "RUNNING" in states,
}


def _cut_searcher_state_short(folder: Path) -> list[str]:
    """Empty the searcher files of Tune's newest state in the search folder under `folder` (a kill during
    Tune's copy to storage left them so beside a whole experiment state); the names of those emptied."""
    (search_dir,) = (folder / "ray_results").iterdir()
    newest = sorted(search_dir.glob("experiment_state-*.json"))[-1]
    session = newest.name.removeprefix("experiment_state-").removesuffix(".json")
    names = (f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl")
    emptied = [search_dir / name for name in names if (search_dir / name).is_file()]
    for file in emptied:
        file.write_bytes(b"")
    return [f.name for f in emptied]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("moment", list(KILL_AT))
def test_a_killed_and_resumed_search_stores_each_trial_once(tmp_path: Path, moment: str) -> None:
    config = copy.deepcopy(TINY_CONFIG)
    config["name"] = "resumed"
    config["space"]["epochs"] = 3
    config["search"] = {"trials": 4, "concurrency": 2, "seed": 1}
    config["asha"] = {"enabled": False}
    config["ray"] = {"checkpoint_every_s": 0}
    copy_search_script(tmp_path)
    write_config(tmp_path, config, "resumed.yaml")
    kill_search_when(tmp_path, "resumed.yaml", lambda folder: KILL_AT[moment](_stored_states(folder)), moment)
    before = _stored_states(tmp_path)
    if moment.endswith("cut short"):
        assert _cut_searcher_state_short(tmp_path), "Tune had saved no searcher state to cut short"
    resumed = run_search_script(tmp_path, "resumed.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    parent, children = _runs(tmp_path, "resumed")
    study = optuna.load_study(study_name=parent.data.tags["precrop.optuna_study"],
                              storage=parent.data.tags["precrop.optuna_storage"])  # fmt: skip
    assert len(study.trials) == 4 == len(children), (before, [t.state for t in study.trials])
    assert _by_trial_id(study.trials).keys() == {r.data.tags["precrop.trial_id"] for r in children}
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert re.search(r"optuna best-trials --study-name \S+ --storage sqlite:///", resumed.stdout)
    if moment.endswith("cut short"):  # the finished trial was not trained again: Tune's state came back whole
        assert "is restored from the driver's copy" in resumed.stdout, resumed.stdout[-3000:]
