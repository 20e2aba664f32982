"""``trainer.compile``: when a run compiles, that it falls back to eager, and that it reuses graphs.

Compiling for real costs tens of seconds cold on 2 cores, so the compiled runs here use one tiny
SimpleCNN and a cache folder shared by the module's tests: the first pays, the rest reuse it.
"""


import pytest
import torch
from tiny_data import tiny_data

from harness.config.settings import build_config
from harness.core.errors import UserError
from harness.recipe import ModelSpec, Recipe, TrainerSpec
from harness.study.identity import trial_identity
from harness.training import compiling
from harness.training.trainer import fit


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inductor")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
        yield folder


def recipe(compile, epochs=2):
    return Recipe(model=ModelSpec(arch="simplecnn", width=8),
                  trainer=TrainerSpec(epochs=epochs, batch_size=16, compile=compile))


DATA = tiny_data(train=40, val=6, test=6, size=16)


def test_auto_compiles_long_runs_on_cpu_and_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiling.decide("auto", cpu, compiling.AUTO_MIN_IMAGES).compiled
    short = compiling.decide("auto", cpu, compiling.AUTO_MIN_IMAGES - 1)
    assert not short.compiled and short.tag.startswith("eager: auto:")
    assert compiling.decide("auto", cuda, 10).compiled
    assert not compiling.decide("auto", torch.device("mps"), 10**9).compiled
    assert compiling.decide(True, cpu, 1).compiled
    assert not compiling.decide(False, cuda, 10**9).compiled
    assert not compiling.decide(True, cpu, 10**9, distributed=True).compiled


def test_the_setting_reads_true_false_and_auto_and_refuses_others():
    assert TrainerSpec().compile is False
    assert TrainerSpec(compile="True").compile is True
    assert TrainerSpec(compile="false").compile is False
    for written, meant in (("trainer.compile=true", True), ("trainer.compile=false", False),
                           ("trainer.compile=auto", "auto")):
        assert build_config(["study=tricks", "budget=smoke", written]).recipe.trainer.compile \
            == meant
    with pytest.raises(UserError, match="unknown trainer.compile 'sometimes'"):
        build_config(["study=tricks", "budget=smoke", "trainer.compile=sometimes"])


def test_compile_setting_is_part_of_the_trial_identity():
    identities = {}
    for setting in ("auto", "true", "false", None):
        extra = [f"trainer.compile={setting}"] if setting else []
        plan = build_config(["study=tricks", "budget=smoke", *extra]).plan()
        recipe = plan.trial_recipe(dict(plan.configs[0]), 0)
        identities[setting] = trial_identity(recipe, 0, plan.budget, "digest")
    assert len({identities["auto"], identities["true"], identities["false"]}) == 3
    # The default is eager, written as before: stores of earlier versions keep their identities.
    assert identities[None] == identities["false"]


def test_a_second_model_of_one_architecture_reuses_the_compiled_graph(inductor_cache):
    torch._dynamo.reset()
    eager = fit(recipe(False), DATA, device="cpu", progress=False)
    first = fit(recipe(True), DATA, device="cpu", progress=False)
    second = fit(recipe(True), DATA, device="cpu", progress=False)
    assert eager.compile_tag.startswith("eager") and eager.compile_seconds == 0
    assert first.compile_tag == second.compile_tag == "compiled"
    assert first.compile_seconds > 0.5  # it did compile (cold, or from the disk cache)
    # The second model hits the first's graph: no tracing, no code generation.
    assert second.compile_seconds < 0.1 * first.compile_seconds, (first.compile_seconds,
                                                                 second.compile_seconds)
    # Same command twice, same numbers; and compiling keeps the run's losses (within float
    # rounding: compiled and eager kernels sum in other orders).
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    for a, b in zip(eager.history, first.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    # Compiling in front of the first step left the model as a fresh one: same first loss.
    assert first.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"],
                                                           rel=1e-5)


def test_auto_trains_eager_with_one_line_when_compiling_fails(inductor_cache, tmp_path,
                                                             monkeypatch, capsys):
    torch._dynamo.reset()
    # A real failure: Inductor cannot build its kernels without a C++ compiler. A fresh cache
    # folder, so no kernel built before is found instead.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(compiling, "AUTO_MIN_IMAGES", 1)
    monkeypatch.setattr(compiling, "_said", set())
    results = [fit(recipe("auto"), DATA, device="cpu", progress=False) for _ in range(2)]
    torch._dynamo.reset()
    eager = fit(recipe(False), DATA, device="cpu", progress=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer.compile: compiling failed ("), lines
    assert lines[0].endswith("; training eager")
    for result in results:
        assert result.status == "finished"
        assert result.compile_tag.startswith("eager: compiling failed"), result.compile_tag
        assert [h["train_loss"] for h in result.history] == \
            [h["train_loss"] for h in eager.history]
