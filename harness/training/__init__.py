"""The training loop and what it is built from.

:func:`harness.training.trainer.fit` is the entry point. It runs the loop
(:mod:`~harness.training.loop`) in this process, or on DDP ranks it starts
(:mod:`~harness.training.devices`); the loop is built from placement, hooks, losses, optimizers,
schedules, evaluation, divergence watching and compiling.
"""
