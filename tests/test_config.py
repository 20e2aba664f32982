import pytest

from harness.config.arguments import parse_overrides
from harness.config.settings import build_config, help_text
from harness.core.errors import UserError
from harness.run import describe_plan, main
from harness.study import list_studies, parse_study


def test_hydra_syntax_values_are_typed():
    values = parse_overrides(["seeds=[0,1,2]", "data.root=/x", "optimizer.lr=0.1",
                              "progress=false", "data.train_size=null"])
    assert values == {"seeds": [0, 1, 2], "data.root": "/x", "optimizer.lr": 0.1,
                      "progress": False, "data.train_size": None}


@pytest.mark.parametrize("study", list_studies())
@pytest.mark.parametrize("budget", ["smoke", "cpu", "full"])
def test_every_study_composes_and_dry_runs(study, budget, capsys):
    cfg = build_config([f"study={study}", f"budget={budget}"])
    assert cfg.study.name == study
    assert cfg.budget == budget
    plan = describe_plan(cfg)
    assert "would run" in plan
    if cfg.study.design.queued:
        assert len(cfg.configs) >= 1
        assert f"{len(cfg.configs) * len(cfg.seeds)} trials would run" in plan
    assert main([f"study={study}", f"budget={budget}", "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"study {study} · budget {budget}")


def test_dry_run_says_what_each_option_changes():
    plan = describe_plan(build_config(["study=tricks", "budget=smoke"]))
    assert "  stem=deep: model.stem=deep" in plan
    assert "  stem=none: nothing" in plan
    assert "  optimizer=adam: optimizer.name=adam, optimizer.lr=0.001" in plan


def test_tricks_grid_is_the_full_factorial():
    cfg = build_config(["study=tricks", "budget=cpu"])
    assert len(cfg.configs) == 16
    assert {c["depth"] for c in cfg.configs} == {"resnet18", "resnet34"}
    assert len({tuple(sorted(c.items())) for c in cfg.configs}) == 16


def test_seed_study_has_the_blog_runs():
    cfg = build_config(["study=seed", "budget=full"])
    assert cfg.recipe.trainer.batch_size == 5
    assert cfg.recipe.optimizer.lr == pytest.approx(1e-3)
    assert cfg.recipe.data.mean == (0.5, 0.5, 0.5)
    assert [c["depth"] for c in cfg.configs].count("resnet18") == 3
    only = build_config(["study=seed", "budget=full", "depth=simplecnn"])
    assert only.configs == ({"depth": "simplecnn", "init": "default", "optimizer": "sgd"},)


def test_auto_budget_follows_the_device():
    assert build_config(["budget=auto"], cuda_available=False).budget == "cpu"
    assert build_config(["budget=auto"], cuda_available=True).budget == "full"


def test_overrides_layer_over_study_and_budget():
    cfg = build_config(["budget=cpu", "model.width=4", "seeds=[0,1,2]", "factors.init=[default]",
                        "label_smoothing=0.1"])
    assert cfg.recipe.model.width == 4  # command line beats the cpu budget's 8
    assert cfg.recipe.data.train_size == 20000  # the cpu budget beats the study
    assert cfg.seeds == (0, 1, 2)
    assert len(cfg.configs) == 8
    assert all(c["label_smoothing"] == "0.1" for c in cfg.configs)
    assert cfg.fixed == {"label_smoothing": "0.1"}


@pytest.mark.parametrize("args, message", [
    (["study=nope"], "unknown study 'nope'"),
    (["no_such_key=1"], "unknown key 'no_such_key'"),
    (["budget=huge"], "unknown budget 'huge'"),
    (["stem=wide"], "unknown option of trick 'stem' 'wide'"),
    (["factors.nope=[a]"], "unknown trick 'nope'"),
    (["trainer.batch_size=-1"], "trainer.batch_size must be a positive integer"),
    (["seeds=[0,0]"], "seeds must not repeat"),
    (["seeds=[]"], "seeds must be a non-empty list"),
    (["init=default,xavier"], "is a sweep"),
    (["data.root"], "overrides look like key=value"),
    (["study=seed", "depth=resnet34"], "no config of study 'seed' has depth=resnet34"),
    (["n_trials=0"], "n_trials must be a positive integer"),
])
def test_bad_input_is_one_line(args, message):
    with pytest.raises(UserError) as info:
        build_config(args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_study_files_are_refused():
    with pytest.raises(UserError, match="unknown kind"):
        parse_study("x", {"kind": "random", "factors": {"stem": ["none"]}})
    with pytest.raises(UserError, match="unknown key in study 'x'"):
        parse_study("x", {"kind": "grid", "factors": {"stem": ["none"]}, "facotrs": {}})
    with pytest.raises(UserError, match="unknown option of trick 'stem'"):
        parse_study("x", {"kind": "grid", "factors": {"stem": ["none", "huge"]}})
    with pytest.raises(UserError, match="design grid needs factors or configs"):
        parse_study("x", {"kind": "grid"})


def test_help_lists_groups_and_keys():
    text = help_text()
    for needle in ("study=NAME", "budget=NAME", "tricks", "trainer.batch_size", "seeds=",
                   "storage=", "tracking_uri="):
        assert needle in text


def _refusal(parse, args: list[str]) -> str:
    with pytest.raises(UserError) as info:
        parse(args)
    return str(info.value)


@pytest.mark.parametrize("arg", ["margin=abc", "margin=0", "out=/tmp/dätä", "budget=huge",
                                 "tracking_uri=${oc.env:HOME}"])
def test_run_and_export_refuse_a_shared_setting_with_the_same_line(arg):
    from harness.export import parse_args as export_args

    run_line = _refusal(build_config, ["study=tricks", arg])
    assert run_line == _refusal(export_args, ["study=tricks", arg])
    assert "\n" not in run_line


def test_run_and_export_read_a_shared_setting_the_same_way():
    from harness.export import parse_args as export_args

    args = ["study=tricks", "budget=smoke", "margin=2", "out=1e5",
            'tracking_uri="sqlite:///a b.db"']
    exported, ran = export_args(args), build_config(args).settings
    for key in ("study", "budget", "margin", "out", "tracking_uri"):
        assert getattr(exported, key) == getattr(ran, key), key
    assert (ran.margin, ran.out, ran.tracking_uri) == (2.0, "1e5", "sqlite:///a b.db")
    # A run id that the grammar would read as a number keeps its text.
    assert export_args(["study=tricks", "parent=1e5"]).parent == "1e5"
    # A command line layered over another: the later value wins on run, as in Hydra; export,
    # which nothing layers, refuses the repeat.
    assert build_config(["study=tricks", "budget=cpu", "budget=smoke"]).budget == "smoke"
    assert "given twice" in _refusal(export_args, ["study=tricks", "budget=cpu", "budget=smoke"])


def test_the_settings_tables_are_the_typed_settings_fields():
    import dataclasses

    from harness.config.settings import EXPORT, RUN, SETTINGS, Settings, command_settings

    fields = {f.name: f for f in dataclasses.fields(Settings)}
    run_keys = [name for name, f in fields.items() if RUN in f.metadata["commands"]]
    assert list(SETTINGS)[:len(run_keys)] == run_keys
    assert all(key.startswith("slurm.") for key in list(SETTINGS)[len(run_keys):])
    assert {key: default for key, (default, _) in SETTINGS.items() if key in fields} == {
        key: fields[key].default for key in run_keys}
    assert set(command_settings(EXPORT)) == {"study", "budget", "out", "tracking_uri", "margin",
                                             "parent", "metric"}
    assert "parent" not in SETTINGS  # export's own keys are refused by run
    assert "unknown key 'parent'" in _refusal(build_config, ["parent=abc"])


def test_seeds_plus_n_is_left_for_after_parsing():
    cfg = build_config(["study=tricks", "budget=smoke", "seeds=+3"])
    assert cfg.more_seeds == 3  # the store is read by with_more_seeds, not by parsing
    assert cfg.seeds == tuple(cfg.study.seeds_for("smoke"))
