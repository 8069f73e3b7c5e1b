"""The record of a search: where it lives (Tune directory, MLflow experiment and parent run) and what it ran.

The driver writes it into the search's Tune directory before the Tuner starts; `precrop reconcile
SEARCH_DIR` reads it back to find the search's runs again. Passwords in URIs are masked on disk.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from precrop.errors import UserError
from search.infra.storage import storage_filesystem
from search.record.tracking import redact_uri
from search.spec.config import ExperimentConfig
from search.spec.grid import Study
from search.spec.parse import parse_config

if TYPE_CHECKING:
    from ray.tune import ExperimentAnalysis

RECORD_FILE = "precrop-search.json"
# Tune warns, each time it reads a search's state (at the end of `fit`, and whenever precrop reads it), for
# every trial that never reported a result (failed or killed before its first epoch) that it found no
# metrics; the trial's own error line already says why
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


@dataclass(frozen=True)
class SearchRecord:
    """One search: its name, Tune directory, tracking URI, MLflow experiment and parent run, its config
    (as a plain dict), for a study its grid, and where its Optuna study is stored (None: in memory)."""

    name: str
    path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    config: dict[str, Any]
    study: dict[str, Any] | None = None
    optuna_storage: str | None = None  # a database URL without a password (search.spec.validate.check_optuna_storage)
    optuna_study: str | None = None

    def experiment_config(self) -> ExperimentConfig:
        """The search's config."""
        return parse_config(self.config)

    def study_grid(self) -> Study | None:
        """The study's grid, for a study."""
        if self.study is None:
            return None
        grid = self.study
        return Study(str(grid["kind"]), str(grid["dimension"]), tuple(grid["values"]), tuple(grid["budgets"]),
                     tuple(grid["seeds"]), grid.get("out_dir"))  # fmt: skip


def optuna_study_name(search: str, parent_run_id: str) -> str:
    """The name of a search's Optuna study: the search's name (its config's name and start time) and its
    parent run id, so it is unique in a storage that many searches share, and stable across `--resume`."""
    return f"{search}-{parent_run_id}"


def write_record(record: SearchRecord) -> None:
    """Save the record into the search's Tune directory (local or remote storage)."""
    text = json.dumps(dataclasses.asdict(record), indent=2) + "\n"
    fs, path = storage_filesystem(record.path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{RECORD_FILE}") as stream:
        stream.write(redact_uri(text).encode())


def read_record(search_dir: str) -> SearchRecord:
    """The record of the search kept in `search_dir`; UserError when it holds none.

    Its `path` is `search_dir`, not the one written inside: a search directory copied or moved (from a
    cluster's bucket to a laptop, say) is read and updated where it is now, never where it was made."""
    where = search_dir.rstrip("/")
    fs, path = storage_filesystem(where)
    try:
        with fs.open_input_stream(f"{path}/{RECORD_FILE}") as stream:
            data = json.loads(stream.readall().decode())
        record = SearchRecord(**data)
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a JSON that is not a record
        raise UserError(f"{search_dir} is not a search directory (no readable {RECORD_FILE})") from exc
    return dataclasses.replace(record, path=where if "://" in where else path)


def tune_analysis(path: str) -> ExperimentAnalysis:
    """Tune's saved state of the search in `path` (ValueError when there is none)."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(path)


def tune_state_saved(path: str) -> bool:
    """Whether Tune saved enough in the search directory `path` to restore (or reconcile) the search from it.

    `Tuner.can_restore` asks only for tuner.pkl, which Tune writes before the first trial; restored from that
    alone, a search would lose its search space and its number of trials (Tune restores both from its
    experiment state), so until Tune saved one, a resumed search starts over under the same parent run.
    """
    from ray.tune import Tuner

    from search.infra.ray_private import experiment_state_saved

    return bool(Tuner.can_restore(path)) and experiment_state_saved(path)
