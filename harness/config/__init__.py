"""The command line's front: settings, their parsing, and the checks before anything trains.

:mod:`~harness.config.settings` holds the settings and builds a run's configuration,
:mod:`~harness.config.arguments` parses the ``key=value`` arguments of the other commands, and
:mod:`~harness.config.preflight` checks what a run needs of this machine.
"""
