"""Launchers: where a study's workers run, one module each, registered in ``LAUNCHERS``.

- ``local``: in this process (one worker) or as child processes of this one;
- ``slurm``: a Slurm job array through submitit (``slurm.cluster=local`` runs it here).

Adding a launcher is one module that registers a :class:`Launcher` subclass, imported here.
Every worker, wherever it runs, is an ordinary worker on the shared storage and tracking store.
"""

from harness.study.launchers import local, slurm
from harness.study.launchers.base import LAUNCHERS, Launch, Launcher, launcher_settings

__all__ = ["LAUNCHERS", "Launch", "Launcher", "launcher_settings", "local", "slurm"]
