"""Bad input, tried as a new user would: one clear line on stderr, exit code 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.run import main
from tests.conftest import make_image_folder

REPO = Path(__file__).resolve().parents[1]


def run_main(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def stores(tmp_path):
    return [f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"storage={tmp_path}/o.journal",
            "progress=false", "budget=smoke"]


@pytest.mark.parametrize("args, needle", [
    (["data.root=/nonexistent", "data.download=false"], "no CIFAR-10 found under '/nonexistent'"),
    (["no_such_key=1"], "unknown key 'no_such_key'"),
    (["data.name=no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    (["trainer.batch_size=-5"], "trainer.batch_size must be a positive integer, got -5"),
    (["study=no_such_study"], "unknown study 'no_such_study'; choose one of: "),
    (["stem=no_such_option"], "unknown option of trick 'stem'"),
    (["factors.no_such_trick=[a,b]"], "unknown trick 'no_such_trick'"),
    (["storage=foo://bar"], "unsupported storage 'foo://bar'"),
    (["storage=/nonexistent/dir/o.journal"], "folder '/nonexistent/dir' does not exist"),
    (["tracking_uri=http://127.0.0.1:9"], "cannot reach the MLflow server at"),
    (["tracking_uri=file:///tmp/mlruns"], "plain file store"),
    (["tracking_uri=sqlite:////nonexistent/dir/m.db"], "does not exist"),
    (["--no-such-flag"], "unknown flag '--no-such-flag'"),
])
def test_bad_input_gives_one_line_and_exit_2(args, needle, tmp_path, capsys):
    base = [a for a in stores(tmp_path) if a.split("=")[0] not in {x.split("=")[0] for x in args}]
    code, err = run_main([*base, *args], capsys)
    assert code == 2
    assert needle in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert not (tmp_path / "o.journal").exists()  # nothing half-written


def test_corrupt_image_is_named(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "images")
    bad = folder / "train" / "b" / "0001.png"
    bad.write_bytes(b"not an image at all")
    code, err = run_main([*stores(tmp_path), "data.name=imagefolder", f"data.root={folder}"],
                         capsys)
    assert code == 2
    assert "0001.png" in err and len(err.splitlines()) == 1


def test_process_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "harness.run", "no_such_key=1"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "Traceback" not in result.stderr


def test_help_and_list_tricks(capsys):
    assert main(["--help"]) == 0
    assert "budget=NAME" in capsys.readouterr().out
    assert main(["--list-tricks"]) == 0
    out = capsys.readouterr().out
    assert "stem" in out and "(default)" in out


def test_a_reader_that_stops_early_gets_no_traceback():
    """``--dry-run | head -1``: the pipe closes under the listing; the run stops quietly."""
    shell = (f"'{sys.executable}' -m harness.run study=bag budget=smoke --dry-run | head -1; "
             f"echo \"rc=${{PIPESTATUS[0]}}\"")
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.startswith("study bag · budget smoke")
    assert result.stdout.strip().endswith("rc=141")
    assert result.stderr == ""
