"""MLflow: the parent run of a search, one child run per trial, and making sure every run ends.

Every tracking request of the search layer is a function here (search/record/models.py reads and registers
models); the names it writes come from search/spec/schema.py. Everything goes through `MlflowClient` with
explicit run ids rather than mlflow's fluent "active run": trials run in Ray worker threads, where a
process-global active run (and the MLFLOW_EXPERIMENT_ID that `mlflow.set_experiment` exports) would
leak between trials.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from requests.exceptions import RequestException

from precrop.errors import UserError
from search.spec.schema import RUN_STATUS, Outcome, Role, RunStatus, Tag
from search.spec.schema import Param as ParamName

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in our output
# a new sqlite store announces its table creation and migrations at INFO: not news to our users
for _chatty in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_chatty).setLevel(logging.WARNING)

# what a request to a tracking server that went away raises (MLflow wraps most, not all, of them)
TRACKING_FAILURES: tuple[type[BaseException], ...] = (MlflowException, RequestException, OSError)
# OSError numbers of local storage trouble (see local_file_error); ENOENT and EACCES come as their subclasses
_FILE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP})
# MLflow retries a failed request 7 times with doubling waits (about 4 minutes) and waits 120 s for an
# answer by default. A server that accepts connections and never answers held a request 127 s under the
# 3 x 30 s this used before (measured); now a metadata request gives up within 15 s: 2 attempts of 7 s
# (urllib3 does not wait before the first retry; MLflow adds up to 1 s of jitter)
BOUNDED_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "7",
}
# an artifact upload (a model's weights) may take longer to answer than a metadata request: its own timeout
ARTIFACT_TIMEOUT_S = 120
_PASSWORD_IN_URI = re.compile(r"(://[^/:@\s]+):[^@\s]+@")


class TrackingError(UserError):
    """The tracking server or database cannot be used."""


def bound_http_retries() -> None:
    """Give up on a tracking server that does not answer within 15 s per request (unless the user set MLflow's
    own MLFLOW_HTTP_REQUEST_* variables)."""
    for name, value in BOUNDED_RETRIES.items():
        os.environ.setdefault(name, value)


@contextmanager
def request_timeout(seconds: int) -> Iterator[None]:
    """MLflow's HTTP timeout set to `seconds` inside (unless the user chose their own), restored after.

    MLflow reads it from the environment at every request, so it is process-wide: use it only where one
    thread sends this process's requests (a trial's sender thread, the driver's main thread)."""
    name = "MLFLOW_HTTP_REQUEST_TIMEOUT"
    saved = os.environ.get(name)
    if saved not in (None, BOUNDED_RETRIES[name]):
        yield
        return
    os.environ[name] = str(seconds)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def redact_uri(text: str) -> str:
    """`text` with the password of every URI in it masked: scheme://user:secret@host -> scheme://user:***@host.

    Tracking URIs of database backends may carry credentials; they are printed and logged only redacted.
    """
    return _PASSWORD_IN_URI.sub(r"\1:***@", text)


def local_file_error(exc: BaseException) -> bool:
    """Whether `exc` is about a local file or folder (gone, not permitted, disk full) rather than about
    reaching MLflow: TRACKING_FAILURES holds OSError for the network errors it covers, so this tells them apart."""
    if not isinstance(exc, OSError) or isinstance(exc, RequestException | ConnectionError | TimeoutError):
        return False
    file_errors = FileNotFoundError | FileExistsError | PermissionError | IsADirectoryError | NotADirectoryError
    return exc.filename is not None or isinstance(exc, file_errors) or exc.errno in _FILE_ERRNOS


def describe_file_error(exc: BaseException) -> str:
    """One line for a local file error: what went wrong and the path (quoted as given)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return redact_uri(f"{exc.strerror or type(exc).__name__}: {exc.filename}"[:1000])
    return redact_uri(first_line(exc, limit=1000))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when empty), at most `limit` characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def resolve_tracking_uri(uri: str, base: Path | None = None) -> str:
    """Make a relative sqlite path absolute (trials run in other working directories)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (base or Path.cwd()) / uri[len(prefix) :]
        return prefix + str(path.resolve())
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI names (sqlite:///, file:, or a bare path), else None."""
    if uri.startswith("sqlite:///"):  # sqlite:///relative.db or sqlite:////absolute.db
        return Path(uri[len("sqlite:///") :])
    if uri.startswith("file:"):
        return Path(uri[len("file:") :].removeprefix("//"))
    if "://" not in uri and ("/" in uri or uri.startswith(".")):  # not a scheme-less name such as "databricks"
        return Path(uri)
    return None


def require_existing_store(uri: str) -> None:
    """TrackingError when `uri` names a local store (sqlite file, file store folder) that does not exist."""
    path = local_store_path(uri)
    if path is not None and not path.exists():
        where = str(path)[:300]
        raise TrackingError(f"no MLflow tracking store at {where} (this command only reads; nothing was created)")


def lazy_client(uri: str) -> MlflowClient:
    """A client for `uri` that has sent no request yet (trials and callbacks must not fail on creating it)."""
    return MlflowClient(tracking_uri=uri)


def client_for(uri: str, create: bool = True) -> MlflowClient:
    """A client for `uri` that has answered one request (else TrackingError naming the URI).

    With `create=False` (commands that only read: pareto, export, study --report) a local
    store that does not exist is an error: MLflow would otherwise create its folder and an empty database.
    """
    if not create:
        require_existing_store(uri)
    bound_http_retries()  # a server that accepts and never answers: one line within 15 s, not minutes
    try:
        client = MlflowClient(tracking_uri=uri)  # a SQLite store is opened (its folder made) right here
        client.search_experiments(max_results=1)
    except Exception as exc:  # connection refused, bad database URI, a server that never answers, ...
        message = redact_uri(first_line(exc))
        verb = "open the MLflow tracking store" if local_store_path(uri) is not None else "reach MLflow tracking"
        raise TrackingError(f"cannot {verb} at {redact_uri(uri)}: {message}") from exc
    return client


def experiment_id(client: MlflowClient, name: str, create: bool = True) -> str:
    """The id of experiment `name`, created when missing (if `create`)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or choose another name")
        return str(experiment.experiment_id)
    if not create:
        raise TrackingError(f"no MLflow experiment named {name!r}")
    try:
        return str(client.create_experiment(name))
    except MlflowException:  # created concurrently
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def open_parent_run(
    client: MlflowClient, experiment: str, name: str, path: str, shown: Mapping[str, Any], study_kind: str | None
) -> str:
    """Create a search's parent run: the (redacted) config `shown` as params and tag, the name and the Tune
    directory `path`; return its id."""
    run = client.create_run(experiment, run_name=name, tags={str(Tag.ROLE): str(Role.SEARCH)})
    parent = str(run.info.run_id)
    log_params(client, parent, {**flatten(shown), ParamName.SEARCH_DIR: path})
    tags: dict[str, str] = {Tag.SEARCH: name, Tag.CONFIG_NAME: str(shown["name"]), Tag.CONFIG: json.dumps(shown),
                            Tag.SEARCH_DIR: path}  # fmt: skip
    if study_kind:
        tags[Tag.STUDY] = study_kind
    set_tags(client, parent, tags)
    return parent


def latest_parent_run(
    client: MlflowClient, experiment: str, tags: Mapping[Tag, str], finished: bool = False
) -> Run | None:
    """The newest parent run of `experiment` carrying every tag of `tags` (and FINISHED, if `finished`)."""
    clauses = [f"tags.`{key}` = '{_quoted(value)}'" for key, value in tags.items()]
    if finished:
        clauses.append(f"attributes.status = '{RunStatus.FINISHED}'")
    runs = client.search_runs([experiment], " and ".join(clauses), order_by=["attributes.start_time DESC"],
                              max_results=1)  # fmt: skip
    return runs[0] if runs else None


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """Mark a run RUNNING again (a resumed search or a retried trial continues its own run)."""
    client.update_run(run_id, status=str(RunStatus.RUNNING))


def get_run(client: MlflowClient, run_id: str) -> Run:
    """Run `run_id` (raises when the server does not have it or does not answer)."""
    return client.get_run(run_id)


def find_run(client: MlflowClient, run_id: str) -> Run | None:
    """Run `run_id`, or None when this server does not have it (a fresh database)."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def find_trial_run(client: MlflowClient, experiment: str, parent_id: str, trial_id: str) -> str | None:
    """The child run a trial created earlier (before a crash), if any."""
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`{Tag.PARENT}` = '{parent_id}' and tags.`{Tag.TRIAL_ID}` = '{trial_id}'",
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else None


def create_trial_run(client: MlflowClient, experiment: str, parent_id: str, trial_id: str, name: str) -> str:
    """A new child run of `parent_id` for `trial_id`."""
    tags = {str(Tag.PARENT): parent_id, str(Tag.TRIAL_ID): trial_id, str(Tag.ROLE): str(Role.TRIAL)}
    return str(client.create_run(experiment, run_name=name, tags=tags).info.run_id)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log a (possibly nested) mapping as dotted params, 100 per request."""
    flat = [Param(str(k), str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[i : i + 100])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log numeric metrics at `step` in one request."""
    timestamp = int(time.time() * 1000)
    batch = [Metric(str(k), float(v), timestamp, step) for k, v in metrics.items() if isinstance(v, int | float)]
    client.log_batch(run_id, metrics=batch)


def logged_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    """The steps at which the run has a value of metric `key`."""
    return {m.step for m in client.get_metric_history(run_id, key)}


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set several tags in one request."""
    client.log_batch(run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])


def log_artifacts(client: MlflowClient, run_id: str, folder: str, artifact_path: str | None = None) -> None:
    """Upload every file under `folder` to the run (under `artifact_path`, else at its root), with the
    longer ARTIFACT_TIMEOUT_S for an answer."""
    with request_timeout(ARTIFACT_TIMEOUT_S):
        client.log_artifacts(run_id, folder, artifact_path=None if artifact_path is None else str(artifact_path))


def has_artifacts(client: MlflowClient, run_id: str, path: str) -> bool:
    """Whether the run holds any artifact under `path`."""
    return bool(client.list_artifacts(run_id, str(path)))


def end_run(client: MlflowClient, run_id: str, outcome: Outcome, reason: str = "") -> None:
    """End a trial's run with `outcome` (its status from schema.RUN_STATUS), recording the outcome tag and
    reason first."""
    tags: dict[str, str] = {Tag.OUTCOME: str(outcome)}
    if reason:
        tags[Tag.REASON] = reason[:5000]
    set_tags(client, run_id, tags)
    client.set_terminated(run_id, status=str(RUN_STATUS[outcome]))


def delete_trial_run(client: MlflowClient, run_id: str, outcome: Outcome, reason: str) -> None:
    """End a trial's run (as `end_run`) and delete it; MLflow deletes softly (`mlflow runs restore`)."""
    end_run(client, run_id, outcome, reason)
    client.delete_run(run_id)


def end_parent_run(client: MlflowClient, run_id: str, status: RunStatus, reason: str = "") -> None:
    """End a search's parent run with `status`, recording why first when it did not finish."""
    if reason:
        set_tags(client, run_id, {Tag.REASON: reason[:5000]})
    client.set_terminated(run_id, status=str(status))


def trial_runs(client: MlflowClient, experiment: str, parent_id: str | None = None) -> list[Run]:
    """Every trial child run of the experiment (of one search when `parent_id` is given)."""
    filters = [f"tags.`{Tag.ROLE}` = '{Role.TRIAL}'"]
    if parent_id is not None:
        filters.append(f"tags.`{Tag.PARENT}` = '{parent_id}'")
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment], " and ".join(filters), max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def running_search_runs(client: MlflowClient) -> list[Run]:
    """Every RUNNING parent run and trial run (tagged with a `precrop.role`) of the store's active experiments."""
    experiments: list[str] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiments += [str(e.experiment_id) for e in page]
        token = page.token
        if not token:
            break
    runs: list[Run] = []
    for start in range(0, len(experiments), 100):  # a bounded number of experiments per request
        for role in (Role.SEARCH, Role.TRIAL):
            query = f"attributes.status = '{RunStatus.RUNNING}' and tags.`{Tag.ROLE}` = '{role}'"
            runs += _all_runs(client, experiments[start : start + 100], query)
    return runs


def _all_runs(client: MlflowClient, experiments: list[str], filter_string: str) -> list[Run]:
    """Every run of `experiments` that matches `filter_string`, page by page."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiments, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
