"""Reading runs back from an MLflow store as a table: the one reader of the report and results.

:func:`runs_frame` returns what ``mlflow.search_runs(output_format="pandas")`` returns (``run_id``,
``experiment_id``, ``status``, ``artifact_uri``, ``start_time``, ``end_time``, then
``metrics.*``, ``params.*`` and ``tags.*``), but reads the store it is given through its own
client, never MLflow's global tracking URI, so reading one store leaves the process's others
alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

_PAGE = 1000  # runs per request, as mlflow.search_runs pages them

_INFO = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")


def runs_frame(tracking_uri: str, experiment_ids: Sequence[str], filter_string: str = "",
               order_by: Sequence[str] | None = None) -> pd.DataFrame:
    """Return the runs of ``experiment_ids`` that ``filter_string`` selects, one row each.

    Args:
        tracking_uri: The store.
        experiment_ids: The experiments to search.
        filter_string: MLflow's search syntax, e.g. ``tags.`harness.role` = 'trial'``.
        order_by: MLflow's order clauses; default: newest first.
    """
    client = MlflowClient(tracking_uri)
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, max_results=_PAGE,
                                  order_by=list(order_by) if order_by else None,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return table(runs)


def table(runs: Iterable[Run]) -> pd.DataFrame:
    """Return ``runs`` as a table in ``mlflow.search_runs``' pandas format."""
    runs = list(runs)
    data: dict[str, list] = {
        "run_id": [run.info.run_id for run in runs],
        "experiment_id": [run.info.experiment_id for run in runs],
        "status": [run.info.status for run in runs],
        "artifact_uri": [run.info.artifact_uri for run in runs],
        "start_time": [pd.to_datetime(run.info.start_time, unit="ms", utc=True) for run in runs],
        "end_time": [pd.to_datetime(run.info.end_time, unit="ms", utc=True) for run in runs],
    }
    for prefix, missing, values in (("metrics.", np.nan, lambda run: run.data.metrics),
                                    ("params.", None, lambda run: run.data.params),
                                    ("tags.", None, lambda run: run.data.tags)):
        keys = dict.fromkeys(key for run in runs for key in values(run))
        for key in keys:
            data[prefix + key] = [values(run).get(key, missing) for run in runs]
    return pd.DataFrame(data, columns=[*_INFO, *(k for k in data if k not in _INFO)])
