"""The search record (precrop-search.json): where a search directory is read and updated."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from search.record.records import RECORD_FILE, SearchRecord, read_record, write_record


def test_a_copied_search_directory_is_read_and_updated_where_it_is_now(tmp_path: Path) -> None:
    made = tmp_path / "cluster" / "search-1"
    write_record(SearchRecord("search-1", str(made), "sqlite:///x.db", "1", "parent-a", {"name": "search-1"}))
    copied = Path(shutil.copytree(made, tmp_path / "laptop" / "search-1"))
    record = read_record(str(copied) + "/")
    assert record.path == str(copied.resolve())
    write_record(dataclasses.replace(record, parent_run_id="parent-b"))  # what reconcile does on a fresh store
    assert json.loads((copied / RECORD_FILE).read_text())["parent_run_id"] == "parent-b"
    assert json.loads((made / RECORD_FILE).read_text())["parent_run_id"] == "parent-a"  # the original untouched
    assert json.loads((made / RECORD_FILE).read_text())["path"] == str(made)
