import pytest

from pipeline.config import MonitorConfig, RecipeConfig, StageConfig, UntilConfig
from pipeline.curriculum.monitors import Budget, Observation, Overfitting, Plateau, build_monitor
from pipeline.curriculum.stage import StageProgress
from pipeline.data.manifest import DirectionSpec, Manifest, SourceSpec


def obs(step, dev=None, train=None, tokens=0, seconds=0.0):
    return Observation(step=step, stage_step=step, stage_tokens=tokens, stage_seconds=seconds, dev=dev, train=train)


def feed(monitor, values, directions=("a",)):
    """Dev losses in sequence, one evaluation per step; returns the 1-based evaluation that fired."""
    for i, v in enumerate(values, 1):
        if monitor.observe(obs(i, dev={d: v for d in directions})) is not None:
            return i
    return None


def test_plateau_fires_when_improvement_falls_below_min_delta_and_not_before():
    m = Plateau(MonitorConfig("plateau", patience=2, min_delta=0.05, relative=False), ["a"])
    # improvements over 2 evaluations: 5.0->4.0 (1.0), 4.5->3.9 (0.6), 4.0->3.88 (0.12), 3.9->3.86 (0.04 < 0.05)
    assert feed(m, [5.0, 4.5, 4.0, 3.9, 3.88, 3.86, 3.85]) == 6
    assert m.fired["improvement"] == pytest.approx(0.04) and m.fired["threshold"] == 0.05


def test_plateau_relative_and_smoothing():
    m = Plateau(MonitorConfig("plateau", patience=3, min_delta=0.01, relative=True), ["a", "b"])
    values = [4.0, 3.5, 3.2, 3.1, 3.09, 3.085, 3.08]
    # relative: over 3 evaluations 3.1 -> 3.08 improves by 0.02 < 1% of 3.1; earlier windows improve more
    assert feed(m, values, ("a", "b")) == 7
    s = Plateau(MonitorConfig("plateau", patience=3, min_delta=0.01, relative=True, smoothing=0.5), ["a"])
    assert feed(s, values) is None  # the smoothed metric still falls by more than 1%: it lags


def test_overfitting_needs_rising_dev_and_falling_train():
    cfg = MonitorConfig("overfitting", directions=["lrl"], patience=2)
    m = Overfitting(cfg, ["lrl"])
    seq = [(3.0, 3.5), (2.8, 3.0), (2.9, 2.5), (3.0, 2.2)]  # (dev, train)
    fired = [m.observe(obs(i, dev={"lrl": d}, train={"lrl": t})) for i, (d, t) in enumerate(seq, 1)]
    assert fired[:3] == [None, None, None] and fired[3]["direction"] == "lrl"
    # dev rising while train also rises is not overfitting
    n = Overfitting(cfg, ["lrl"])
    for i, (d, t) in enumerate([(3.0, 2.0), (3.1, 2.1), (3.2, 2.2), (3.3, 2.3)], 1):
        assert n.observe(obs(i, dev={"lrl": d}, train={"lrl": t})) is None


def test_overfitting_on_a_zero_shot_direction_uses_the_mean_training_loss_of_the_trained_ones():
    cfg = MonitorConfig("overfitting", directions=["deu-fra"], patience=2)
    m = Overfitting(cfg, ["deu-fra"], eval_only=frozenset({"deu-fra"}))
    # deu-fra is never trained: its training side is the mean of eng-deu's and eng-fra's
    # ((3.6+3.4)/2 = 3.5, then 3.0, 2.5, 2.2) while its dev loss rises at the last two evaluations
    seq = [(3.0, 3.6, 3.4), (2.8, 3.1, 2.9), (2.9, 2.6, 2.4), (3.0, 2.3, 2.1)]
    fired = [m.observe(obs(i, dev={"deu-fra": d}, train={"eng-deu": a, "eng-fra": b})) for i, (d, a, b) in enumerate(seq, 1)]
    assert fired[:3] == [None, None, None]
    assert fired[3]["direction"] == "deu-fra" and fired[3]["train_loss"] == [3.0, 2.5, 2.2]
    # without eval_only, a direction absent from the training losses is no evidence: never fires
    n = Overfitting(cfg, ["deu-fra"])
    assert all(n.observe(obs(i, dev={"deu-fra": d}, train={"eng-deu": a})) is None for i, (d, a, _) in enumerate(seq, 1))


def test_budget_steps_tokens_minutes():
    assert Budget(MonitorConfig("budget", steps=3), []).observe(obs(2)) is None
    assert Budget(MonitorConfig("budget", steps=3), []).observe(obs(3))["budget"] == "steps"
    assert Budget(MonitorConfig("budget", tokens=100), []).observe(obs(1, tokens=99)) is None
    assert Budget(MonitorConfig("budget", tokens=100), []).observe(obs(1, tokens=100))["budget"] == "tokens"
    assert Budget(MonitorConfig("budget", minutes=0.5), []).observe(obs(1, seconds=31))["budget"] == "minutes"


@pytest.mark.parametrize("kind,seq", [("plateau", [5.0, 4.0, 3.9, 3.89, 3.889, 3.888]),
                                       ("overfitting", [3.0, 2.0, 2.1, 2.2, 2.3, 2.4])])
def test_state_round_trip_fires_at_the_same_step(kind, seq):
    cfg = MonitorConfig(kind, patience=2, min_delta=0.05, relative=False)
    a = build_monitor(cfg, ["x"])
    train = [5.0 - i for i in range(len(seq))]
    fired_a = [a.observe(obs(i, dev={"x": v}, train={"x": train[i]})) for i, v in enumerate(seq)]
    b = build_monitor(cfg, ["x"])
    for i, v in enumerate(seq[:3]):
        b.observe(obs(i, dev={"x": v}, train={"x": train[i]}))
    c = build_monitor(cfg, ["x"])
    c.load_state_dict(b.state_dict())
    fired_c = [c.observe(obs(i, dev={"x": v}, train={"x": train[i]})) for i, v in enumerate(seq[3:], 3)]
    assert fired_a[3:] == fired_c and any(f is not None for f in fired_c)


def _manifest():
    spec = SourceSpec(src="a", tgt="b")
    return Manifest([DirectionSpec("eng", "fra", spec, spec, group="hrl"),
                     DirectionSpec("eng", "bos", spec, spec, group="lrl")])


def test_until_min_steps_any_all_and_max_steps():
    plateau = MonitorConfig("plateau", directions=["group:hrl"], patience=1, min_delta=0.5, relative=False)
    budget = MonitorConfig("budget", steps=2)
    recipe = RecipeConfig(stages=[StageConfig("s", until=UntilConfig(max_steps=10, min_steps=4, any=[plateau]))])
    recipe.train.eval_every = 1
    prog = StageProgress(recipe, 0, _manifest(), start_step=0)
    ends = [prog.observe(obs(i, dev={"eng-fra": 3.0, "eng-bos": 3.0})) for i in range(1, 6)]
    assert ends[:3] == [None, None, None]  # the plateau fired at step 2 (latched) but min_steps is 4
    assert ends[3].reason == "monitor" and ends[3].monitor == "plateau"
    recipe2 = RecipeConfig(stages=[StageConfig("s", until=UntilConfig(max_steps=10, all=[plateau, budget]))])
    p2 = StageProgress(recipe2, 0, _manifest(), start_step=0)
    assert p2.observe(obs(1, dev={"eng-fra": 3.0, "eng-bos": 1.0})) is None
    e = p2.observe(obs(2, dev={"eng-fra": 3.0, "eng-bos": 1.0}))
    assert e.reason == "monitor" and e.monitor == "plateau+budget"
    recipe3 = RecipeConfig(stages=[StageConfig("s", until=UntilConfig(max_steps=3))])
    p3 = StageProgress(recipe3, 0, _manifest(), start_step=10)
    assert p3.observe(Observation(12, 2, 0, 0.0)) is None
    assert p3.observe(Observation(13, 3, 0, 0.0)).reason == "max_steps"
