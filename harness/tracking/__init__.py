"""MLflow: the names a run logs, the store, and what one trial writes there.

:mod:`~harness.tracking.schema` names every tag, param, metric and artifact;
:mod:`~harness.tracking.store` reads and writes the store; the other modules write one trial's
params, metrics, figures, checkpoint and provenance.
"""
