"""Do the report's calls keep their promises? Simulated studies through the real report code.

Every simulated study is built at the level of per-example test results, then analysed by the
project's own functions (``harness.report.effects.option_tests`` and ``effects_table``, the
verdict's ``stability``). The world of a scenario:

- a test set of N images drawn from a population, each with a difficulty (a logit);
- configs of a design (a full grid, airbench's leave-one-out set, a fraction) whose options
  shift the logits (main effects, optional two-way interactions), plus seed-stable per-example
  differences between configs (each trick changes *which* images are right, and each config has
  its own idiosyncrasies);
- training-seed noise: every image's outcome is a fresh Bernoulli draw, plus a run-level shift
  of all logits, sized so that one run's accuracy has the scenario's SD ``sigma`` (points);
- optionally one config ``noisy`` times noisier, or runs that diverge (chance-level predictions).

The truth of an option is its effect on the population's accuracy in expectation over seeds
(Gauss-Hermite quadrature, exact), averaged over the design's pairs as the report's estimand is.
A call is wrong when it says helps and the truth is <= 0, hurts and the truth is >= 0, or
negligible and |truth| >= margin. For each scenario this prints, with Wilson 95% intervals:
the family-wise error rate (FWER, share of studies with any wrong call), the power (option 0
called with its true sign, where it has an effect), the joint coverage of the intervals, and
where asked the realised power at the study's own ``detectable`` and the calibration of
``p_in_set``.

    python benchmarks/calibration.py                 # the full table (about 75 min on 2 cores)
    python benchmarks/calibration.py --quick         # 3 scenarios x 1000 studies, for CI
    python benchmarks/calibration.py --only loo --studies 500

Scenarios named ``auto ...`` are ``seeds=auto`` studies: the rounds of
:mod:`harness.study.designs.adaptive` from ``seeds`` up to ``max_seeds`` seeds, each look calling
at its share of the error rate, stopping as the harness does. Their FWER counts a wrong call at
any look, and they also print the rounds used and the share that ran to the cap.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.report import stats  # noqa: E402
from harness.report.effects import HELPS, HURTS, NEGLIGIBLE, effects_table, option_tests  # noqa: E402
from harness.report.examples import ExampleResults  # noqa: E402
from harness.report.verdict import (  # noqa: E402
    open_options,  # noqa: E402
    settle_plan,
    stability,
)
from harness.study.designs.adaptive import Rounds  # noqa: E402

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(64)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
MARGIN = stats.MARGIN


def mean_sigmoid(mean: float, variance: float) -> float:
    """Return E[sigmoid(Z)] for Z ~ N(mean, variance)."""
    return float(np.sum(_WEIGHTS * special.expit(mean + math.sqrt(max(variance, 0.0)) * _NODES)))


def mean_sigmoid_squared(mean: float, variance: float) -> float:
    """Return E[sigmoid(Z)^2] for Z ~ N(mean, variance)."""
    z = mean + math.sqrt(max(variance, 0.0)) * _NODES
    return float(np.sum(_WEIGHTS * special.expit(z) ** 2))


# --- designs --------------------------------------------------------------------------------


def full_grid(k: int) -> np.ndarray:
    """Every combination of k two-level factors (0 = the default), first factor slowest."""
    return np.array(list(itertools.product([0, 1], repeat=k)), dtype=int)


def leave_one_out(k: int) -> np.ndarray:
    """airbench's design: every trick on, each one off in turn, every trick off."""
    return np.vstack([np.ones((1, k), int), 1 - np.eye(k, dtype=int), np.zeros((1, k), int)])


def half_fraction(k: int) -> np.ndarray:
    """The 2^(k-1) fraction whose last factor is the product of the others (resolution k)."""
    base = full_grid(k - 1)
    last = (np.prod(2 * base - 1, axis=1) + 1) // 2
    return np.column_stack([base, last]).astype(int)


DESIGNS = {"grid": full_grid, "loo": leave_one_out, "half": half_fraction}


# --- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One simulated regime: a design, its seeds, the accuracy level and the noise.

    ``effects`` maps a factor to its true effect in units of ``sigma`` (the rest are null);
    ``interaction`` is every two-way interaction's size (the double difference
    y(a,b) - y(a,0) - y(0,b) + y(0,0)) in units of ``sigma``, alternating in sign.
    """

    name: str
    design: str
    factors: int
    seeds: int
    accuracy: float = 0.5
    images: int = 10_000
    sigma: float = 2.5  # points: one run's accuracy SD over seeds
    pair_sd: float = 0.15  # points: the seed-stable SD of a paired difference on this test set
    interaction: float = 0.0
    noisy: float = 1.0  # the last config's sigma, as a multiple
    diverge: float = 0.0  # chance that a run diverges
    effects: tuple[tuple[int, float], ...] = ()
    detectable: bool = False  # also measure the realised power at the study's detectable
    stability: bool = False  # also check p_in_set against reruns
    max_seeds: int = 0  # seeds=auto: rounds from ``seeds`` up to this many; 0: a fixed study

    @property
    def configs(self) -> np.ndarray:
        """The design's configs: one row per config, one 0/1 column per factor."""
        return DESIGNS[self.design](self.factors)


@dataclass
class World:
    """A scenario's fixed parameters, solved once: logits, shifts and the truth."""

    scenario: Scenario
    mean_logit: float
    spread: float  # SD of the images' difficulty logits
    trick_sd: float  # SD of a trick's per-example pattern
    config_sd: float  # SD of a config's own per-example idiosyncrasy
    offsets: np.ndarray  # per config: logit shift from the options
    shifts: np.ndarray  # per config: SD of the run-level logit shift
    truth: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per factor, points
    scale: dict[int, float] = field(default_factory=dict)  # factor → logit size of its effect
    interaction_logit: float = 0.0


def _spread_for(accuracy: float) -> float:
    # At 94% most images are always right: a wide spread of difficulty keeps the per-image
    # seed noise as small as a GPU run's (0.15 points at 10,000 images).
    return 5.0 if accuracy > 0.8 else 1.5


def build_world(scenario: Scenario) -> World:
    """Solve a scenario's parameters so that its accuracies, noise and effects are as stated."""
    spread = _spread_for(scenario.accuracy)
    mean = optimize.brentq(lambda m: mean_sigmoid(m, spread**2) - scenario.accuracy, -12, 12)
    slope = 100 * (mean_sigmoid(mean + 1e-3, spread**2) - mean_sigmoid(mean - 1e-3, spread**2)) \
        / 2e-3  # points per logit
    trick_sd, config_sd = _pattern_sds(mean, spread, scenario.pair_sd, scenario.images)
    configs = scenario.configs
    world = World(scenario, mean, spread, trick_sd, config_sd, np.zeros(len(configs)),
                  np.zeros(len(configs)))
    scale = {factor: size * scenario.sigma / slope for factor, size in scenario.effects}
    world.interaction_logit = scenario.interaction * scenario.sigma / slope
    for _ in range(6):  # rescale until each effect is exact in points, as the estimand says
        world.scale = dict(scale)
        world.offsets = _offsets(configs, scale, world.interaction_logit)
        world.shifts = np.array([
            _shift_for(world, offset, scenario.sigma * (scenario.noisy if c == len(configs) - 1
                                                        else 1.0))
            for c, offset in enumerate(world.offsets)])
        world.truth = _truth(world)
        for factor, size in scenario.effects:
            scale[factor] *= size * scenario.sigma / world.truth[factor]
    return world


def _offsets(configs: np.ndarray, scale: dict[int, float], interaction: float) -> np.ndarray:
    centred = configs - 0.5
    offsets = np.zeros(len(configs))
    for factor, size in scale.items():
        offsets += centred[:, factor] * size
    for a, b in itertools.combinations(range(configs.shape[1]), 2):
        sign = 1.0 if (a + b) % 2 else -1.0
        offsets += sign * 4.0 * interaction * centred[:, a] * centred[:, b]
    return offsets


def _pattern_sds(mean: float, spread: float, pair_sd: float, images: int) -> tuple[float, float]:
    """Return (trick_sd, config_sd) giving a paired difference the seed-stable SD ``pair_sd``."""
    if pair_sd <= 0:
        return 0.0, 0.0
    rng = np.random.default_rng(12345)
    logits = rng.normal(mean, spread, 200_000)
    noise = rng.standard_normal((3, logits.size))

    def paired_sd(size: float) -> float:
        trick, own = size * math.sqrt(0.5), size * 0.5  # half the variance from each source
        difference = trick * noise[0] + own * (noise[1] - noise[2])
        gap = special.expit(logits + difference / 2) - special.expit(logits - difference / 2)
        return 100 * float(gap.std()) / math.sqrt(images)

    size = optimize.brentq(lambda s: paired_sd(s) - pair_sd, 1e-4, 30)
    return size * math.sqrt(0.5), size * 0.5


def _pattern_variance(world: World) -> float:
    return world.scenario.factors * world.trick_sd**2 / 4 + world.config_sd**2


def _shift_for(world: World, offset: float, sigma: float) -> float:
    """Return the run-level logit shift SD that gives one run's accuracy the SD ``sigma``."""
    mean = world.mean_logit + offset
    variance = world.spread**2 + _pattern_variance(world)
    target = (sigma / 100) ** 2
    images = world.scenario.images

    def run_variance(shift: float) -> float:
        centres = mean + shift * _NODES
        levels = np.array([mean_sigmoid(c, variance) for c in centres])
        between = float(np.sum(_WEIGHTS * (levels - np.sum(_WEIGHTS * levels)) ** 2))
        within = np.array([mean_sigmoid(c, variance) - mean_sigmoid_squared(c, variance)
                           for c in centres])
        return between + float(np.sum(_WEIGHTS * within)) / images

    if run_variance(0.0) >= target:
        return 0.0  # the per-image noise alone is already this large
    return optimize.brentq(lambda s: run_variance(s) - target, 0.0, 60.0)


def _population_accuracy(world: World) -> np.ndarray:
    """Return each config's accuracy on the population, in expectation over seeds (points)."""
    variance = world.spread**2 + _pattern_variance(world)
    scenario = world.scenario
    chance = 100.0 / 10
    return np.array([
        (1 - scenario.diverge) * 100 * mean_sigmoid(world.mean_logit + o, variance + s**2)
        + scenario.diverge * chance
        for o, s in zip(world.offsets, world.shifts)])


def _truth(world: World) -> np.ndarray:
    """Return each factor's estimand: the mean over the design's pairs (or the full grid's)."""
    scenario = world.scenario
    if scenario.design == "half":  # a fraction estimates the full factorial's main effect
        grid = full_grid(scenario.factors)
        full = replace(world, scenario=replace(scenario, design="grid", noisy=1.0),
                       offsets=_offsets(grid, world.scale, world.interaction_logit))
        full.shifts = np.array([_shift_for(full, o, scenario.sigma) for o in full.offsets])
        return _pair_means(grid, _population_accuracy(full))
    return _pair_means(scenario.configs, _population_accuracy(world))


def _pair_means(configs: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    index = {tuple(row): c for c, row in enumerate(configs)}
    truth = []
    for factor in range(configs.shape[1]):
        differences = []
        for c, row in enumerate(configs):
            if row[factor] == 1:
                partner = row.copy()
                partner[factor] = 0
                if tuple(partner) in index:
                    differences.append(accuracy[c] - accuracy[index[tuple(partner)]])
        truth.append(np.mean(differences) if differences else math.nan)
    return np.array(truth)


# --- one simulated study --------------------------------------------------------------------


FACTOR_NAMES = tuple(f"t{f}" for f in range(12))


def simulate(world: World, rng: np.random.Generator) -> tuple[pd.DataFrame, ExampleResults]:
    """Return one study's runs table and per-example results, as the report loads them."""
    scenario = world.scenario
    configs = scenario.configs
    n_configs, k, images = len(configs), configs.shape[1], scenario.images
    difficulty = rng.normal(world.mean_logit, world.spread, images)
    patterns = rng.standard_normal((k, images)).astype(np.float32) * world.trick_sd
    logits = (difficulty[None, :] + world.offsets[:, None]
              + (configs - 0.5).astype(np.float32) @ patterns
              + world.config_sd * rng.standard_normal((n_configs, images)).astype(np.float32))
    config_of = np.repeat(np.arange(n_configs), scenario.seeds)
    seed_of = np.tile(np.arange(scenario.seeds), n_configs)
    shift = rng.standard_normal(len(config_of)) * world.shifts[config_of]
    correct = rng.random((len(config_of), images), dtype=np.float32) < special.expit(
        logits[config_of] + shift[:, None].astype(np.float32))
    if scenario.diverge:
        diverged = rng.random(len(config_of)) < scenario.diverge
        if diverged.any():  # predicts one class: right on that class's tenth of the images
            correct[diverged] = rng.random(images) < 0.1
    names = FACTOR_NAMES[:k]
    run_ids = [f"r{i}" for i in range(len(config_of))]
    accuracy = 100.0 * correct.mean(axis=1)
    runs = pd.DataFrame({
        "run_id": run_ids, "status": "FINISHED", "failure": None, "seed": seed_of,
        **{name: np.where(configs[config_of, f] == 1, "on", "off") for f, name in enumerate(names)},
        "test_acc": accuracy, "test_images": float(images), "train_seconds": 10.0,
    })
    examples = ExampleResults(dict(zip(run_ids, correct)), dict.fromkeys(run_ids, "d"))
    return runs, examples


def factors_of(scenario: Scenario) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Return the report's factors and defaults of a scenario's design."""
    names = FACTOR_NAMES[: scenario.factors]
    return {name: ["off", "on"] for name in names}, dict.fromkeys(names, "off")


def wrong_calls(effects: pd.DataFrame, truth: np.ndarray, margin: float = MARGIN) -> bool:
    """Return whether any call of a study is wrong against the truth."""
    for call, true in zip(effects["call"], truth):
        if (call == HELPS and true <= 0) or (call == HURTS and true >= 0) or (
                call == NEGLIGIBLE and abs(true) >= margin):
            return True
    return False


@dataclass
class Tally:
    """Counts over the simulated studies of one scenario."""

    studies: int = 0
    wrong: int = 0
    called: int = 0  # option 0 called with its true sign
    covered: int = 0  # every interval held the truth
    detectable: list[float] = field(default_factory=list)
    in_set: list[tuple[float, bool]] = field(default_factory=list)  # (p_in_set, in rerun's set)
    rounds: list[int] = field(default_factory=list)  # seeds=auto: the rounds each study ran


def run_rounds(scenario: Scenario, count: int, seed: int) -> Tally:
    """Simulate ``count`` seeds=auto studies of ``scenario``: every look's calls are tallied.

    Each study is simulated at ``max_seeds`` seeds; look k reads the runs of its first seeds,
    as round k of the harness reads the runs its grown study adopted.
    """
    world = build_world(replace(scenario, seeds=scenario.max_seeds))
    rng = np.random.default_rng(seed)
    factors, defaults = factors_of(scenario)
    rounds = Rounds(first=tuple(range(scenario.seeds)), max_seeds=scenario.max_seeds)
    alpha = rounds.look_alpha(stats.ALPHA)
    n_configs = len(scenario.configs)
    tally = Tally()
    for _ in range(count):
        runs, examples = simulate(world, rng)
        wrong, looked = False, 0
        for seeds in rounds.seeds():
            looked += 1
            tests = option_tests(runs[runs["seed"] < len(seeds)], factors, defaults, examples)
            effects = effects_table(tests, alpha)
            wrong = wrong or wrong_calls(effects, world.truth)
            plan = settle_plan(tests, effects, len(seeds), n_configs)
            if not open_options(effects, plan)[0]:
                break
        tally.studies += 1
        tally.wrong += wrong
        tally.rounds.append(looked)
        first, sign = effects.iloc[0], np.sign(world.truth[0])
        tally.called += bool((sign > 0 and first["call"] == HELPS)
                             or (sign < 0 and first["call"] == HURTS))
        low, high = effects["ci_low"].to_numpy(float), effects["ci_high"].to_numpy(float)
        tally.covered += bool(np.all((low <= world.truth) & (world.truth <= high)))
    return tally


def run_studies(scenario: Scenario, count: int, seed: int) -> Tally:
    """Simulate ``count`` studies of ``scenario`` and tally their calls."""
    if scenario.max_seeds:
        return run_rounds(scenario, count, seed)
    world = build_world(scenario)
    rng = np.random.default_rng(seed)
    factors, defaults = factors_of(scenario)
    tally = Tally()
    previous = None
    for _ in range(count):
        runs, examples = simulate(world, rng)
        tests = option_tests(runs, factors, defaults, examples)
        effects = effects_table(tests)
        tally.studies += 1
        tally.wrong += wrong_calls(effects, world.truth)
        first = effects.iloc[0]
        sign = np.sign(world.truth[0])
        tally.called += bool((sign > 0 and first["call"] == HELPS)
                             or (sign < 0 and first["call"] == HURTS))
        low, high = effects["ci_low"].to_numpy(float), effects["ci_high"].to_numpy(float)
        tally.covered += bool(np.all((low <= world.truth) & (world.truth <= high)))
        if scenario.detectable:
            tally.detectable.append(float(first["detectable"]))
        if scenario.stability:
            chances = stability(tests, 0.8, draws=500)
            chosen = _chosen_set(effects)
            if previous is not None:
                for key, chance in previous.items():
                    tally.in_set.append((chance, key in chosen))
            previous = chances
    return tally


def _chosen_set(effects: pd.DataFrame, share: float = 0.8) -> set[tuple[str, str]]:
    helping = effects[effects["call"] == HELPS].sort_values("effect_mean", ascending=False)
    if helping.empty:
        return set()
    cumulative = np.cumsum(helping["effect_mean"].to_numpy()) / helping["effect_mean"].sum()
    size = int(np.argmax(cumulative >= share - 1e-12)) + 1
    return set(zip(helping["trick"][:size], helping["option"][:size]))


def _work(job: tuple[Scenario, int, int]) -> Tally:
    scenario, count, seed = job
    return run_studies(scenario, count, seed)


def measure(scenario: Scenario, count: int, jobs: int, seed: int = 0) -> Tally:
    """Run ``count`` studies of ``scenario`` over ``jobs`` processes and merge their tallies."""
    parts = [(scenario, count // jobs + (i < count % jobs), seed * 1000 + i) for i in range(jobs)]
    if jobs == 1:
        tallies = [_work(parts[0])]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            tallies = pool.map(_work, parts)
    merged = Tally()
    for t in tallies:
        merged.studies += t.studies
        merged.wrong += t.wrong
        merged.called += t.called
        merged.covered += t.covered
        merged.detectable += t.detectable
        merged.in_set += t.in_set
        merged.rounds += t.rounds
    return merged


def rate(successes: int, trials: int) -> str:
    """Return 'rate [low, high]' in percent with its Wilson 95% interval."""
    low, high = stats.wilson_interval(successes, trials)
    return f"{100 * successes / max(trials, 1):.1f} [{100 * low:.1f}, {100 * high:.1f}]"


# --- the table ------------------------------------------------------------------------------


def scenarios() -> list[Scenario]:
    """Return every scenario of the full table."""
    gpu = dict(accuracy=0.94, images=10_000, sigma=0.15, pair_sd=0.07)
    cpu = dict(accuracy=0.5, images=10_000, sigma=2.5, pair_sd=0.15)
    small = dict(accuracy=0.5, images=2_500, sigma=5.0, pair_sd=0.3)
    found = []
    for k, seeds in itertools.product((3, 4, 6), (1, 2, 3, 5)):
        if k == 6 and seeds == 5:
            continue  # 320 runs a study; 2^6 x 3 covers the large grid
        found.append(Scenario(f"2^{k} x{seeds} 50% null", "grid", k, seeds, **cpu))
    for seeds in (1, 2, 3):
        found.append(Scenario(f"2^3 x{seeds} 94% null", "grid", 3, seeds, **gpu))
        found.append(Scenario(f"2^4 x{seeds} 50% N=2500 s=5 null", "grid", 4, seeds, **small))
    for seeds in (2, 3):
        found.append(Scenario(f"loo6 x{seeds} 50% N=2500 null", "loo", 6, seeds, **small))
        found.append(Scenario(f"loo6 x{seeds} 50% null, one config 8x noisier", "loo", 6,
                              seeds, **cpu, noisy=8.0))
        found.append(Scenario(f"loo6 x{seeds} 94% null", "loo", 6, seeds, **gpu))
    for seeds in (1, 2):
        found.append(Scenario(f"half 2^(6-1) x{seeds} 50% null", "half", 6, seeds, **cpu))
        found.append(Scenario(f"half 2^(6-1) x{seeds} 50% null, one config 8x noisier", "half", 6,
                              seeds, **cpu, noisy=8.0))
    for seeds, noisy in itertools.product((1, 2, 3), (4.0, 8.0)):
        found.append(Scenario(f"2^3 x{seeds} 50% null, one config {noisy:g}x noisier", "grid", 3,
                              seeds, **cpu, noisy=noisy))
    for seeds in (2, 3):
        found.append(Scenario(f"2^4 x{seeds} 50% null, 5% of runs diverge", "grid", 4, seeds,
                              **cpu, diverge=0.05))
        found.append(Scenario(f"2^4 x{seeds} 94% null, 5% of runs diverge", "grid", 4, seeds,
                              **gpu, diverge=0.05))
    for seeds, size in itertools.product((1, 2), (1.0, 4.0)):
        found.append(Scenario(f"2^4 x{seeds} 50% null, interactions {size:g}s", "grid", 4,
                              seeds, **cpu, interaction=size))
    # Power: option 0 has an effect of 1, 2 or 3 sigma; the others are null.
    for size in (1.0, 2.0, 3.0):
        found.append(Scenario(f"2^3 x3 94% effect {size:g}s", "grid", 3, 3, **gpu,
                              effects=((0, size),)))
        found.append(Scenario(f"2^3 x2 50% effect {size:g}s", "grid", 3, 2, **cpu,
                              effects=((0, size),)))
        found.append(Scenario(f"2^4 x1 50% effect {size:g}s, interactions 1s", "grid", 4, 1,
                              **cpu, effects=((0, size),), interaction=1.0))
        found.append(Scenario(f"2^4 x1 50% effect {size:g}s, interactions 4s", "grid", 4, 1,
                              **cpu, effects=((0, size),), interaction=4.0))
        found.append(Scenario(f"2^4 x2 50% effect {size:g}s", "grid", 4, 2, **cpu,
                              effects=((0, size),)))
        found.append(Scenario(f"half 2^(6-1) x1 50% effect {size:g}s", "half", 6, 1, **cpu,
                              effects=((0, size),)))
    # seeds=auto: rounds of one seed more from one seed to five, every look counted.
    for effect, name in (((), "null"), (((0, 3.0),), "effect 3s")):
        found.append(Scenario(f"auto 2^4 x1-5 50% {name}", "grid", 4, 1, **cpu, max_seeds=5,
                              effects=effect))
        found.append(Scenario(f"auto 2^3 x1-5 94% {name}", "grid", 3, 1, **gpu, max_seeds=5,
                              effects=effect))
    found.append(Scenario("auto loo6 x2-5 50% N=2500 null", "loo", 6, 2, **small, max_seeds=5))
    found.append(Scenario("auto 2^3 x1-5 50% null, one config 8x noisier", "grid", 3, 1, **cpu,
                          noisy=8.0, max_seeds=5))
    # Planning numbers and stability.
    found.append(Scenario("2^3 x3 50% detectable", "grid", 3, 3, **cpu, detectable=True))
    found.append(Scenario("2^4 x2 50% detectable", "grid", 4, 2, **cpu, detectable=True))
    found.append(Scenario("2^3 x3 94% detectable", "grid", 3, 3, **gpu, detectable=True))
    found.append(Scenario("2^4 x2 50% effects 3s,2s,1s: stability", "grid", 4, 2, **cpu,
                          effects=((0, 3.0), (1, 2.0), (2, 1.0)), stability=True))
    found.append(Scenario("2^3 x3 94% effects 3s,2s: stability", "grid", 3, 3, **gpu,
                          effects=((0, 3.0), (1, 2.0)), stability=True))
    return found


QUICK = ("2^3 x2 50% null, one config 8x noisier", "loo6 x2 50% null, one config 8x noisier",
         "2^3 x3 94% effect 3s")
"""The reduced table CI runs: the two regimes where a pooled variance or a lifted df fails, and
the GPU power figure."""


def row(scenario: Scenario, tally: Tally, jobs: int) -> dict[str, str]:
    """Return one printed row of the table, measuring the detectable follow-up if asked."""
    n = tally.studies
    result = {"scenario": scenario.name, "studies": str(n), "FWER %": rate(tally.wrong, n),
              "power %": rate(tally.called, n) if scenario.effects else "",
              "joint coverage %": rate(tally.covered, n)}
    if scenario.max_seeds and tally.rounds:
        at_cap = sum(r == scenario.max_seeds - scenario.seeds + 1 for r in tally.rounds)
        result["rounds"] = (f"mean {np.mean(tally.rounds):.2f}; to the cap "
                            f"{rate(at_cap, len(tally.rounds))}")
    if scenario.detectable and tally.detectable:
        size = float(np.nanmedian(tally.detectable))
        follow = replace(scenario, name=scenario.name + " at detectable", detectable=False,
                         effects=((0, size / scenario.sigma),))
        again = measure(follow, n, jobs, seed=7)
        result["at detectable"] = f"{size:.2f} pts: power {rate(again.called, again.studies)}"
    if scenario.stability and tally.in_set:
        high = [hit for chance, hit in tally.in_set if chance >= 0.9]
        mid = [hit for chance, hit in tally.in_set if 0.5 <= chance < 0.9]
        result["P(in set)"] = (f">=90%: {rate(sum(high), len(high))} in rerun set (n={len(high)});"
                               f" 50-90%: {rate(sum(mid), len(mid))} (n={len(mid)})")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the table (or part of it) and print it as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="the CI table: 3 scenarios x 1000")
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    chosen = scenarios()
    if args.quick:
        chosen = [s for s in chosen if s.name in QUICK]
        args.studies = min(args.studies, 1000)
    if args.only:
        chosen = [s for s in chosen if args.only in s.name]
    rows = []
    for scenario in chosen:
        started = time.perf_counter()
        tally = measure(scenario, args.studies, args.jobs)
        rows.append(row(scenario, tally, args.jobs))
        print(f"{scenario.name}: {rows[-1]['FWER %']} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).fillna("")
    header = "| " + " | ".join(table.columns) + " |"
    print(header)
    print("|" + "|".join("---" for _ in table.columns) + "|")
    for values in table.itertuples(index=False):
        print("| " + " | ".join(values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
