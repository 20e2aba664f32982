"""Studies: study files, plans, the Optuna queue of trials, workers and their launchers.

- ``spec``: study files (``studies/NAME.yaml``) parsed and checked;
- ``plan``: what a study's trials are (configs × seeds), each one's recipe and seed;
- ``identity``: what a trial computes, the digest by which any study finds it again;
- ``reuse``: a grown study adopts the finished runs of the trials it shares, once each;
- ``storage``: the Optuna storage and the lock its queue changes under;
- ``queue``: a grid as a queue of waiting trials, claimed once, queued again when lost;
- ``runner``: opening a study, its parent run, and a worker that claims and trains trials;
- ``launchers``: one worker in this process, N local processes, or a Slurm job array;
- ``progress``: one line per worker.

Only the light modules are re-exported here: the runner and launchers pull in MLflow, which the
command line's ``--help`` and ``--dry-run`` do not need.
"""

from harness.study.plan import Cell, Plan, config_label, run_name, study_key, torch_seed
from harness.study.spec import SearchRange, StudySpec, list_studies, load_study, parse_study

__all__ = [
    "Cell",
    "Plan",
    "SearchRange",
    "StudySpec",
    "config_label",
    "list_studies",
    "load_study",
    "parse_study",
    "run_name",
    "study_key",
    "torch_seed",
]
