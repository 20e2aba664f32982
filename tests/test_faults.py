"""Faults a real deployment meets, on the real components: a torn journal, a closed folder.

A torn journal tail (what a power cut or a full disk leaves) is cut off when the journal is
opened, and the study goes on with every complete record; a journal damaged in the middle is
refused with one line and left as it is. The unit tests build journals with Optuna's own
``JournalStorage``; the end-to-end ones run real one-config studies on generated images through
``harness.run.main``. ``make services`` in a folder the postgres user cannot enter says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from harness.core.errors import UserError
from harness.run import main
from harness.study.journal import TORN_SUFFIX, repair_journal, scan_journal
from harness.tracking.schema import Tag
from tests.conftest import make_learnable_folder
from tests.test_growth import experiment_runs, finished, trained_under

ONE_CONFIG = ["study=tricks", "stem=none", "init=default", "optimizer=sgd", "depth=resnet18"]
RECORD = b'{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}'


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small learnable ImageFolder: enough for smoke trials, quick to train."""
    return make_learnable_folder(tmp_path_factory.mktemp("images"), per_class_train=12,
                                 per_class_test=4)


def study_args(images: Path, tmp: Path, *extra: str) -> list[str]:
    """A one-config smoke study on the generated images, into stores under ``tmp``."""
    return [*ONE_CONFIG, "budget=smoke", "progress=false", "device=cpu",
            "data.name=imagefolder", f"data.root={images}", "data.val_size=6",
            "data.train_size=null", "data.test_size=null",
            f"tracking_uri=sqlite:///{tmp}/mlflow.db", f"storage={tmp}/o.journal",
            f"out={tmp}/report", *extra]


def journal_with_trials(path: Path, count: int) -> None:
    """Write a real Optuna journal at ``path``: a study and ``count`` finished trials."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="demo", storage=storage)
    for value in range(count):
        study.add_trial(optuna.create_trial(value=float(value)))


def trials_in(path: Path) -> list[float]:
    """The values of the finished trials that a fresh Optuna storage reads from ``path``."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    return [t.value for t in optuna.load_study(study_name="demo", storage=storage).trials]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# scan_journal: what a journal's bytes hold


def test_an_intact_journal_needs_nothing():
    content = RECORD + b"\n" + RECORD + b"\n"
    scan = scan_journal(content)
    assert scan.intact and scan.keep == len(content) and scan.records == 2


def test_an_empty_journal_needs_nothing():
    assert scan_journal(b"").intact


def test_half_a_last_line_is_torn():
    scan = scan_journal(RECORD + b"\n" + RECORD[:20])
    assert (scan.keep, scan.records, scan.torn) == (len(RECORD) + 1, 1, RECORD[:20])


def test_a_record_glued_onto_a_torn_line_is_torn_too():
    # What an older harness left: the next record appended onto the torn bytes, newline and all.
    glued = RECORD[:20] + RECORD + b"\n"
    scan = scan_journal(RECORD + b"\n" + glued)
    assert (scan.keep, scan.records, scan.torn) == (len(RECORD) + 1, 1, glued)


def test_a_complete_last_record_without_its_newline_is_kept():
    content = RECORD + b"\n" + RECORD
    scan = scan_journal(content)
    assert scan.unterminated and not scan.torn and scan.keep == len(content)
    assert scan.records == 2


@pytest.mark.parametrize("bad", [RECORD[:20], b"", b"[1, 2]", b'{"no": "op_code"}', b"\xff\xfe"],
                         ids=["half", "blank", "not an object", "no op_code", "not utf-8"])
def test_a_bad_line_in_the_middle_is_damage(bad):
    scan = scan_journal(RECORD + b"\n" + bad + b"\n" + RECORD + b"\n")
    assert scan.damaged_line == 2 and not scan.torn and scan.keep == len(RECORD) + 1


# repair_journal on journals Optuna wrote


def test_a_torn_tail_is_saved_aside_and_cut_off(tmp_path):
    journal = tmp_path / "o.journal"
    journal_with_trials(journal, 3)
    intact = journal.read_bytes()
    torn = intact.splitlines()[-1][:25]
    journal.write_bytes(intact + torn)
    said = []
    repair_journal(journal, said.append)
    assert journal.read_bytes() == intact
    (aside,) = tmp_path.glob(f"o.journal{TORN_SUFFIX}*")
    assert aside.read_bytes() == torn
    assert len(said) == 1 and "torn" in said[0] and str(aside) in said[0], said
    # The next record lands on a line of its own, where Optuna reads it.
    study = optuna.load_study(study_name="demo",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    study.add_trial(optuna.create_trial(value=3.0))
    assert trials_in(journal) == [0.0, 1.0, 2.0, 3.0]


def test_a_last_record_without_its_newline_gets_one_and_counts(tmp_path):
    journal = tmp_path / "o.journal"
    journal_with_trials(journal, 2)
    journal.write_bytes(journal.read_bytes().removesuffix(b"\n"))
    assert trials_in(journal) == [0.0]  # Optuna skips a record without its newline
    said = []
    repair_journal(journal, said.append)
    assert journal.read_bytes().endswith(b"}\n") and len(said) == 1, said
    assert trials_in(journal) == [0.0, 1.0]
    assert not list(tmp_path.glob(f"o.journal{TORN_SUFFIX}*"))


def test_a_record_half_written_by_a_live_writer_is_not_taken_for_torn(tmp_path):
    journal = tmp_path / "o.journal"
    journal_with_trials(journal, 2)
    intact = journal.read_bytes()
    record = intact.splitlines(keepends=True)[-1]
    writer = JournalFileSymlinkLock(str(journal))  # what Optuna's backend appends under
    writer.acquire()
    with journal.open("ab") as file:
        file.write(record[:10])
    said = []
    repairing = threading.Thread(target=repair_journal, args=(journal, said.append))
    repairing.start()
    time.sleep(0.5)
    assert repairing.is_alive()  # it waits for the writer instead of cutting its record off
    with journal.open("ab") as file:
        file.write(record[10:])
    writer.release()
    repairing.join(timeout=30)
    assert not repairing.is_alive() and said == []
    assert journal.read_bytes() == intact + record
    assert not list(tmp_path.glob(f"o.journal{TORN_SUFFIX}*"))


def test_an_intact_journal_is_left_alone_and_nothing_is_said(tmp_path):
    journal = tmp_path / "o.journal"
    journal_with_trials(journal, 2)
    before = journal.stat()
    said = []
    assert repair_journal(journal, said.append).intact
    assert said == [] and journal.stat().st_mtime_ns == before.st_mtime_ns


def test_damage_in_the_middle_is_refused_and_changes_nothing(tmp_path):
    journal = tmp_path / "o.journal"
    journal_with_trials(journal, 3)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:10] + b"\n"
    journal.write_bytes(b"".join(lines))
    before = sha256(journal)
    with pytest.raises(UserError, match=rf"journal {journal}: line 2 is not a complete record"):
        repair_journal(journal, print)
    assert sha256(journal) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.journal"]  # and its lock is gone


# End to end: real studies through harness.run.main


@pytest.mark.slow
def test_a_torn_journal_tail_then_a_grown_study_reuses_every_trial(images, tmp_path, capsys):
    assert main(study_args(images, tmp_path, "seeds=[0]")) == 0
    _, _, (first_run,), _ = experiment_runs(tmp_path, "tricks-smoke")
    journal = tmp_path / "o.journal"
    intact = journal.read_bytes()
    torn = intact.splitlines()[-1][:40]  # half a JSON record, as a power cut leaves it
    with journal.open("ab") as file:
        file.write(torn)
    capsys.readouterr()

    assert main(study_args(images, tmp_path, "seeds=[0,1]")) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if line.startswith(f"journal {journal}:")]
    assert len(said) == 1 and "torn" in said[0], out
    assert "1 reused, 1 to run" in out, out
    (aside,) = tmp_path.glob(f"o.journal{TORN_SUFFIX}*")
    assert aside.read_bytes() == torn
    assert journal.read_bytes().startswith(intact)  # every complete record kept, in place
    assert scan_journal(journal.read_bytes()).intact  # the next records on lines of their own

    _, _, runs, parents = experiment_runs(tmp_path, "tricks-smoke")
    assert len(runs) == 2 and len(finished(runs)) == 2  # seed 0 was not trained twice
    grown = trained_under(runs, parents[0].info.run_id)
    assert [r.data.tags[Tag.SEED] for r in grown] == ["1"]
    assert first_run.info.run_id in {r.info.run_id for r in runs}
    # A third run finds the journal intact and everything done.
    assert main(study_args(images, tmp_path, "seeds=[0,1]")) == 0
    out = capsys.readouterr().out
    assert f"journal {journal}:" not in out, out
    assert len(experiment_runs(tmp_path, "tricks-smoke")[2]) == 2


@pytest.mark.slow
def test_a_journal_damaged_in_the_middle_is_refused_and_left_as_it_is(images, tmp_path, capsys):
    assert main(study_args(images, tmp_path)) == 0
    journal = tmp_path / "o.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + b"\n"
    journal.write_bytes(b"".join(lines))
    before = {p.name: sha256(p) for p in tmp_path.iterdir() if p.is_file()}
    capsys.readouterr()

    assert main(study_args(images, tmp_path, "seeds=[0,1]")) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(f"error: journal {journal}: line 4 "), err
    assert {p.name: sha256(p) for p in tmp_path.iterdir() if p.is_file()} == before


# make services in a folder the postgres user cannot enter


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None,
                    reason="needs root, which runs PostgreSQL as the postgres user")
def test_services_in_a_closed_folder_say_why_and_how_to_choose_another(capsys):
    from harness.study import services

    if not (services.PG_BIN / "initdb").is_file():
        pytest.skip(f"no PostgreSQL binaries in {services.PG_BIN}")
    closed = Path(tempfile.mkdtemp(prefix="harness-closed-"))  # mode 0700, owned by root
    try:
        assert services.main(["start", "--folder", str(closed / "services")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err], err
        assert f"cannot enter {closed}" in err and "SERVICES_DIR=" in err, err
        assert not (closed / "services" / "pgdata").exists()
    finally:
        shutil.rmtree(closed)
