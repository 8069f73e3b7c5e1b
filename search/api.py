"""`search.load`: a trial's cropped model back from MLflow, as an nn.Module with its WidthPlan.

precrop.load reads a local folder (plan.json + model.pt); this one also reads what a search logged:
`runs:/<id>` (or `runs:/<id>/model`, or the bare run id) and `models:/NAME@ALIAS` of `precrop export
--register`. It lives in `search/` because only this package talks to MLflow.
"""

from __future__ import annotations

from pathlib import Path

from precrop.api import Cropped
from precrop.api import load as load_folder
from precrop.errors import UserError
from search.spec.limits import shown

MODELS_SCHEME = "models:/"


def load(ref: str | Path, tracking_uri: str | None = None) -> Cropped:
    """The model and plan at `ref`: a local folder, `runs:/<id>[/model]`, a run id, or `models:/NAME@ALIAS`.

    The model is in eval mode on the CPU and takes normalized inputs, as in training; the exported
    (deployable) model has the normalization inside (docs/deploy.md). `tracking_uri` defaults to
    $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
    """
    if isinstance(ref, Path) or Path(ref).is_dir():
        return load_folder(ref)
    from search.record import tracking
    from search.record.models import load_run_bundle, parse_run_ref, registered_run
    from search.spec.locations import default_tracking_uri

    uri = tracking.resolve_tracking_uri(tracking_uri or default_tracking_uri())
    client = tracking.client_for(uri, create=False)
    registered = ref.startswith(MODELS_SCHEME)
    run_id = registered_run(client, *_name_and_alias(ref)) if registered else parse_run_ref(ref)
    loaded = load_run_bundle(client, run_id)
    return Cropped(loaded.model, loaded.plan)


def _name_and_alias(ref: str) -> tuple[str, str]:
    """NAME and ALIAS of `models:/NAME@ALIAS` (versions by number are not supported: aliases name them)."""
    name, at, alias = ref[len(MODELS_SCHEME) :].partition("@")
    if not (name and at and alias) or "/" in alias:
        raise UserError(f"unsupported model URI {shown(ref)}: give models:/NAME@ALIAS")
    return name, alias
