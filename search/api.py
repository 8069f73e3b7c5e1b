"""`search.load`: a trial's cropped model back from MLflow, as an nn.Module with its WidthPlan.

precrop.load reads a local folder (plan.json + model.pt); this one also reads what a search logged:
`runs:/<id>` (or `runs:/<id>/model`, or the bare run id), and `models:/NAME@ALIAS` or `models:/NAME/VERSION`
of `precrop export --register`. It lives in `search/` because only this package talks to MLflow.
"""

from __future__ import annotations

from pathlib import Path

from precrop.api import Cropped
from precrop.api import load as load_folder


def load(ref: str | Path, tracking_uri: str | None = None) -> Cropped:
    """The model and plan at `ref`: a local folder, `runs:/<id>[/model]`, a run id, `models:/NAME@ALIAS` or
    `models:/NAME/VERSION`.

    The model is in eval mode on the CPU and takes normalized inputs, as in training; the exported
    (deployable) model has the normalization inside (docs/deploy.md). `tracking_uri` defaults to
    $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
    """
    if isinstance(ref, Path) or Path(ref).is_dir():
        return load_folder(ref)
    from search.record import tracking
    from search.record.models import load_run_bundle, parse_model_ref, resolve_run
    from search.spec.locations import default_tracking_uri

    named = parse_model_ref(ref)  # a malformed reference is refused before MLflow is asked
    uri = tracking.resolve_tracking_uri(tracking_uri or default_tracking_uri())
    client = tracking.client_for(uri, create=False)
    loaded = load_run_bundle(client, resolve_run(client, named))
    return Cropped(loaded.model, loaded.plan)
