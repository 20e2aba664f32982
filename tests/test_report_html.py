"""report.html: one self-contained page with the verdict, the calls, the figures and provenance."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from test_report import make_runs

from harness.report.effects import CALLS
from harness.report.html import CALL_CLASSES, FIGURES, NOT_RECORDED
from harness.report.render import verdict_sentence
from harness.report.writer import REPORT_FILES, recorded_tags, write_report

FACTORS = {"a": ["off", "on"], "b": ["off", "on"], "c": ["off", "on"], "d": ["off", "on"]}
DEFAULTS = {trick: options[0] for trick, options in FACTORS.items()}
EXPECTED_CALLS = {"a": "helps", "b": "hurts", "c": "negligible", "d": "undetermined"}


def _four_calls(toggles, seed) -> float:
    """a helps (+8), b hurts (-5), c is negligible (0), d swings with the seed: undetermined."""
    on = {trick: option != "off" for trick, option in toggles.items()}
    wobble = 0.05 * np.sin(1000 * seed + sum(2**i * v for i, v in enumerate(on.values())))
    return 60 + 8 * on["a"] - 5 * on["b"] + 3 * on["d"] * (seed - 1) + wobble


META = {"factors": FACTORS, "defaults": DEFAULTS, "kind": "grid", "study": "toy",
        "budget": "cpu", "command": ["study=toy", "budget=cpu", "seeds=[0,1,2]"],
        "experiment": "toy-cpu", "parent_run_id": "parent123"}


class _Page(HTMLParser):
    """Collects what the tests look at: tag attributes, and the rows of each table by class."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.rows: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("class", "")
        elif tag == "tr" and self._table is not None:
            self.rows.setdefault(self._table, []).append((attributes, []))
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[self._table][-1][1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    tags = {"harness.git_sha": ["abc123", "def456-dirty"], "harness.torch_version": ["2.14.1"],
            "harness.dataset_digest": ["d1g35t"], "harness.device": ["cuda:0"]}
    return write_report(make_runs(FACTORS, _four_calls), META, out, draws=20, tags=tags)


@pytest.fixture(scope="module")
def page(written):
    return written.paths["html"].read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def parsed(page):
    parser = _Page()
    parser.feed(page)
    return parser


def test_report_html_is_written_beside_the_other_files(written):
    assert REPORT_FILES["html"] == "report.html"
    path = written.paths["html"]
    assert path.name == "report.html" and path.parent == written.paths["verdict"].parent
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]


def test_the_page_references_nothing_outside_itself(page, parsed):
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script[^>]*\ssrc|<link[^>]*\shref=[\"']?http|<img[^>]*\ssrc=[\"']?http",
                         page)
    assert not [tag for tag, _ in parsed.tags if tag in ("link", "iframe", "object", "embed")]
    references = [value for _, attrs in parsed.tags for name, value in attrs.items()
                  if name in ("src", "href", "srcset", "action")]
    assert references and all(value.startswith("data:") for value in references)


def test_every_figure_is_embedded_as_the_png_that_was_written(written, parsed):
    sources = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(sources) == len(FIGURES)
    for name, source in zip(FIGURES, sources):
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]) == written.paths[name].read_bytes()


def test_the_verdict_sentence_comes_first(written, page, parsed):
    sentence = html.escape(verdict_sentence(written.verdict))
    assert sentence in page
    assert page.index(sentence) < page.index("<h2>")  # above every section
    assert any(attrs.get("id") == "verdict" for _, attrs in parsed.tags)


def test_every_option_s_row_is_coloured_by_its_call(written, page, parsed):
    calls = dict(zip(written.verdict.effects["trick"], written.verdict.effects["call"]))
    assert calls == EXPECTED_CALLS  # the fixture exercises all four calls
    header, *rows = parsed.rows["options"]
    assert header[1][:4] == ["rank", "trick", "option", "call"]
    shown = {}
    for attributes, cells in rows:
        trick, call = cells[1], cells[3]
        assert attributes["class"] == CALL_CLASSES[call] == f"call-{call}"
        assert attributes["data-call"] == call
        assert cells[6] == "±1"  # the margin
        shown[trick] = call
    assert shown == EXPECTED_CALLS
    for call in CALLS:  # each class has its colour in the inline style
        assert re.search(rf"tr\.call-{call} td \{{ background: #[0-9a-f]{{6}}; }}", page)


def test_the_configs_table_sorts_with_its_inline_script_and_reads_without(written, parsed):
    header, *rows = parsed.rows["sortable configs"]
    assert header[1][: len(FACTORS)] == list(FACTORS)
    assert len(rows) == len(written.configs) == 16
    assert "run_ids" not in header[1]
    assert any("baseline" in attrs.get("class", "") for attrs, _ in rows)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert len(scripts) == 1 and not scripts[0]


def test_per_class_accuracy_of_the_best_config_against_the_baseline(written, page, parsed):
    header, *rows = parsed.rows["per-class"]
    assert header[1][:3] == ["class", "baseline %", "best %"]
    section = page[page.index("<h2>Per-class"):]
    assert "Baseline: a=off, b=off, c=off, d=off." in section
    best_toggles = ", ".join(f"{t}={o}" for t, o in written.verdict.best_config.items())
    assert f"Best: {best_toggles}." in section and best_toggles.startswith("a=on, b=off")
    best = written.configs.loc[written.configs["test_acc_mean"].idxmax()]
    base = written.configs.iloc[0]  # grid order: all defaults first
    for cells, name in zip([cells for _, cells in rows], ("cat", "dog")):
        assert cells[0] == name
        assert float(cells[1]) == pytest.approx(base[f"test_acc_{name}_mean"], abs=0.05)
        assert float(cells[2]) == pytest.approx(best[f"test_acc_{name}_mean"], abs=0.05)


def test_provenance_shows_what_was_recorded_and_says_what_was_not(page):
    section = page[page.index("<h2>Provenance</h2>"):]
    assert "<dt>git sha</dt><dd>abc123, def456-dirty</dd>" in section
    assert "<dt>torch version</dt><dd>2.14.1</dd>" in section
    assert "<dt>dataset digest</dt><dd>d1g35t</dd>" in section
    assert "<dt>device</dt><dd>cpu, cuda:0</dd>" in section  # the tag and the runs' column
    assert "<dt>budget</dt><dd>cpu</dd>" in section
    assert f'<dt>python version</dt><dd class="missing">{NOT_RECORDED}</dd>' in section
    assert "python -m harness.run study=toy budget=cpu" in section
    assert html.escape("'seeds=[0,1,2]'") in section


def test_without_tags_or_a_command_nothing_is_invented(tmp_path):
    meta = {"factors": FACTORS, "defaults": DEFAULTS}
    page = write_report(make_runs(FACTORS, _four_calls), meta, tmp_path,
                        draws=0).paths["html"].read_text(encoding="utf-8")
    section = page[page.index("<h2>Provenance</h2>"):]
    for label in ("git sha", "torch version", "dataset digest", "budget", "command"):
        assert f'<dt>{label}</dt><dd class="missing">{NOT_RECORDED}</dd>' in section


def test_every_string_from_the_study_is_escaped(tmp_path):
    factors = {"<b>x</b>": ["off", "<script>alert(1)</script>"]}
    runs = make_runs(factors, lambda toggles, seed: 50.0 + seed)
    meta = {"factors": factors, "defaults": {"<b>x</b>": "off"}, "study": "s&p", "budget": "cpu",
            "command": ["study=s&p", 'note="<i>"']}
    page = write_report(runs, meta, tmp_path, draws=0).paths["html"].read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<b>x</b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "s&amp;p" in page


class _Client:
    """Stands in for MlflowClient over a few runs (a real store's schema takes seconds to make);
    the browser test reads the tags of a real study."""

    def __init__(self, runs):
        self.runs = runs
        self.searches = []

    def __call__(self, uri):
        return self

    def _run(self, run_id):
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id),
                               data=SimpleNamespace(tags=self.runs[run_id]))

    def get_run(self, run_id):
        return self._run(run_id)

    def search_runs(self, experiment_ids, filter_string, max_results):
        assert experiment_ids == ["7"]
        ids = re.fullmatch(r"attributes\.run_id IN \((.*)\)", filter_string).group(1)
        wanted = [name.strip("' ") for name in ids.split(",")]
        self.searches.append(len(wanted))
        assert len(wanted) <= max_results
        return [self._run(run_id) for run_id in wanted if run_id in self.runs]


def test_recorded_tags_reads_the_parent_and_its_trials(monkeypatch):
    import mlflow

    stored = {"parent": {"harness.device": "cuda:0", "harness.dataset_digest": "d1",
                         "harness.role": "parent"},
              "other": {"harness.git_sha": "not-in-the-study"}}
    trials = [f"trial{index}" for index in range(150)]
    for index, run_id in enumerate(trials):
        stored[run_id] = {"harness.git_sha": "abc" if index % 3 else "def",
                          "harness.torch_version": "2.14.1", "harness.budget": "cpu"}
    client = _Client(stored)
    monkeypatch.setattr(mlflow, "MlflowClient", client)
    runs = pd.DataFrame({"run_id": trials})
    tags = recorded_tags("sqlite:///unused.db", {"parent_run_id": "parent", "experiment_id": "7"},
                         runs)
    assert tags == {"harness.git_sha": ["abc", "def"], "harness.torch_version": ["2.14.1"],
                    "harness.budget": ["cpu"], "harness.device": ["cuda:0"],
                    "harness.dataset_digest": ["d1"]}
    assert client.searches == [100, 50]  # in chunks, so the filter stays short
