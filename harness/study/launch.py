"""Launching a study: prepare it, let its launcher run the workers, and close it.

Which launcher runs the workers, and how, is the launcher's own module
(:mod:`harness.study.launchers`); this module never branches on its name. A worker that a
fault stops (a full disk, a store unreachable past ``retry_window``) ends with one line and its
own exit code (:mod:`harness.core.faults`); the stores are then left as they are, for the next
start to repair.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence

from harness.core.devices import resolve_device
from harness.core.errors import UserError
from harness.study.launchers import Launch
from harness.study.launchers.base import resolve_workers
from harness.study.launchers.tasks import WorkerTask
from harness.study.plan import Plan
from harness.study.queue import FAILURE_ATTR, OWNER_ATTR, RUN_ATTR, Owner, QueueState
from harness.study.runner import Prepared, StudyOutcome, StudySession, WorkerResult, prepare_study
from harness.tracking.store import check_tracking_uri


def run_study(plan: Plan, launch: Launch, announce: Callable[[str], None] = print
              ) -> StudyOutcome:
    """Prepare a study, run its workers as ``launch`` says, and close its parent run.

    Returns:
        What this command did. ``interrupted`` is set when Ctrl-C stopped it; the runs in flight
        are then KILLED and their trials queued again by the next start.
    """
    starter = launch.starter
    starter.check_can_start()  # before any store is opened: a refusal changes nothing
    plan = dataclasses.replace(plan, tracking_uri=check_tracking_uri(plan.tracking_uri))
    gpus = starter.visible_gpus(plan.device)
    workers = resolve_workers(launch.workers, gpus, launch.trials_per_gpu)
    in_process = starter.in_process(workers)
    if not in_process and plan.device.startswith("cuda:"):
        raise UserError(f"device={plan.device} pins one GPU; with several workers choose the "
                        f"GPUs with CUDA_VISIBLE_DEVICES and use device=cuda")
    launch_id = uuid.uuid4().hex[:12]
    device = resolve_device(plan.device) if in_process else "cpu"
    prepared = prepare_study(plan, device, announce)
    plan = prepared.session.plan  # now with the data digest that trial identities need
    tasks = [WorkerTask(plan, i, prepared.parent_run_id, launch_id) for i in range(workers)]
    results = starter.run(prepared, launch_id, tasks, gpus, announce)
    return _finish(prepared, launch_id, results)


def _finish(prepared: Prepared, launch_id: str, results: Sequence[WorkerResult | str]
            ) -> StudyOutcome:
    """Abandon what stopped workers left, close the parent run and gather the outcome.

    After a fault the stores are left to the next start, which repairs them (a journal's torn
    last record included, see :mod:`harness.study.journal`).
    """
    session = prepared.session
    plan = session.plan
    done = [r for r in results if isinstance(r, WorkerResult)]
    interrupted = any(r.interrupted for r in done)
    stopped = [r for r in done if r.stopped]
    trials = sorted((t for r in done for t in r.trials), key=lambda t: t.number)
    outcome = StudyOutcome(
        plan.name, plan.name, prepared.parent_run_id, plan.optuna_study_name,
        session.storage_url, session.tracker.uri, trials, skipped=prepared.filled.done,
        requeued=prepared.filled.requeued, interrupted=interrupted,
        lost_workers=[r for r in results if isinstance(r, str)])
    if stopped:
        first = min(stopped, key=lambda r: r.exit_code)  # a full disk before an outage
        outcome.stopped, outcome.exit_code = first.stopped, first.exit_code
        # A journal record a full disk cut short is cut off (and kept aside) when the next
        # command opens the journal: harness.study.journal.
        outcome.stopped_workers = len(stopped)
        return outcome
    queue = session.queue(Owner.here(launch=launch_id))

    def close() -> QueueState:
        with session.lock:
            if interrupted or len(done) < len(results):
                _abandon(session, launch_id, "interrupted" if interrupted else "stale")
            queue.repair()
            return queue.state()

    state = session.storage_outage.call(close)
    if interrupted:
        session.tracker.end(prepared.parent_run_id, "KILLED")
    elif state.drained:
        session.tracker.end(prepared.parent_run_id, "FINISHED")
    session.tracker.flush()
    outcome.still_running = state.running
    return outcome


def _abandon(session: StudySession, launch_id: str, failure: str) -> None:
    """Fail the RUNNING trials a launch's workers left behind and close their runs."""
    from optuna.trial import TrialState

    storage = session.storage
    for trial in session.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if (trial.user_attrs.get(OWNER_ATTR) or {}).get("launch") != launch_id:
            continue
        storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, failure)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        session.tracker.close_if_running([trial.user_attrs.get(RUN_ATTR, "")], failure,
                                         "its worker was stopped; the trial is run again")
