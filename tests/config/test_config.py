from pathlib import Path

import pytest

from pipeline.core.typed_yaml import ConfigError
from pipeline.curriculum.recipe import load_recipe


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_and_override(tmp_path):
    p = write(tmp_path, "name: x\ntrain:\n  max_steps: 10\n")
    cfg = load_recipe(p, ["train.max_steps=200", "model.preset=base", "sampling.params.temperature=2"])
    assert cfg.train.max_steps == 200
    assert cfg.model.preset == "base"
    assert cfg.sampling.params == {"temperature": 2}
    assert cfg.resolved_stages()[0].name == "main"


def test_all_errors_reported_together_with_key_paths_and_lines(tmp_path):
    p = write(tmp_path, "name: x\ntrain:\n  max_stepz: 10\n  lr: fast\nmodel:\n  preset: huge\nbogus: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(p)
    errors = exc.value.errors
    assert len(errors) == 4, errors
    text = "\n".join(errors)
    assert f"{p}:3: train.max_stepz: unknown key 'max_stepz'" in text
    assert "valid keys here:" in text and "max_steps" in text
    assert f"{p}:4: train.lr: expected a number" in text
    assert f"{p}:6: model.preset: must be one of" in text
    assert f"{p}:7: bogus: unknown key" in text


def test_a_wrong_type_does_not_hide_the_other_checks_of_its_section(tmp_path):
    p = write(tmp_path, """\
train:
  max_steps: "ten"
  lr: -1
  max_bad_steps: 0
  clip_norm: -1
model:
  preset: huge
  dropout: 1.5
stages:
  - {name: a, directions: [group:nope]}
  - {name: b, directions: [eng-xxx, all]}
""")
    with pytest.raises(ConfigError) as exc:
        load_recipe(p)
    errors = exc.value.errors
    # before: 4 of these 8 (the section's checks stopped at its first wrong type; stage names
    # were checked only once the tokenizer and DeepSpeed had started, without a key path)
    assert len(errors) == 8, errors
    for line, key, msg in [(2, "train.max_steps", "expected an integer, got 'ten'"), (3, "train.lr", "must be > 0"),
                           (4, "train.max_bad_steps", "must be >= 1"), (5, "train.clip_norm", "must be >= 0"),
                           (7, "model.preset", "must be one of"), (8, "model.dropout", "must be in [0, 1)"),
                           (10, "stages[0].directions[0]", "unknown group 'nope' (groups: hrl, lrl)"),
                           (11, "stages[1].directions[0]", "unknown direction 'eng-xxx' (directions: eng-deu,")]:
        assert any(e.startswith(f"{p}:{line}: {key}: {msg}") for e in errors), (key, errors)


def test_semantic_checks_and_sampler_params(tmp_path):
    p = write(tmp_path, "train: {max_steps: 0}\nsampling: {kind: temperature, params: {temprature: 5}}\n"
                        "stages: [{name: a}, {name: a}]\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(p)
    text = "\n".join(exc.value.errors)
    assert "train.max_steps: must be >= 1" in text
    assert "sampling.params.temprature: unknown key" in text
    assert "stage names must be unique; repeated: a" in text


def test_unknown_sampler_kind(tmp_path):
    p = write(tmp_path, "sampling: {kind: magic}\n")
    with pytest.raises(ConfigError, match="unknown sampler 'magic'; known: .*temperature"):
        load_recipe(p)


def test_bad_set_syntax(tmp_path):
    p = write(tmp_path, "name: x\n")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_recipe(p, ["train.max_steps"])
    with pytest.raises(ConfigError, match="name is not a mapping"):
        load_recipe(p, ["name.sub=1"])


def test_shipped_recipes_load():
    root = Path(__file__).resolve().parents[2] / "stages"
    recipes = sorted(root.glob("*.yaml"))
    assert recipes, "stages/ holds no recipes"
    for r in recipes:
        load_recipe(r)


def test_stage_limits_follow_the_budget_and_reserve_later_stages(tmp_path):
    two = Path(__file__).resolve().parents[2] / "stages" / "two_stage.yaml"
    for budget in (1300, 700):
        cfg = load_recipe(two, [f"train.max_steps={budget}"])
        # hrl: at most 60% of the run; monitors from 25%; the mix keeps its 30% either way
        assert cfg.stage_limits(0, 0) == round(0.6 * budget)
        assert cfg.stages[0].until.min_for(budget) == round(0.25 * budget)
        assert cfg.stage_limits(1, round(0.6 * budget)) == budget and not cfg.budget_warnings()
    # the absolute form at 700 steps: hrl may take all 700 (before: the mix got 100 at its plateau)
    p = write(tmp_path, "train: {max_steps: 700}\nstages:\n  - {name: hrl, until: {max_steps: 800}}\n  - {name: mix}\n")
    cfg = load_recipe(p)
    assert cfg.budget_warnings() == ["stage mix can get as few as 0 of 700 steps (0%) if the stages before it run "
                                     "to their limits; give it stages[1].min_share or cap them with until.max_fraction"]
    cfg = load_recipe(p, ["stages.1.min_share=0.4"])  # 0.4 * 700 = 280 kept: hrl ends by step 420
    assert cfg.stage_limits(0, 0) == 420 and not cfg.budget_warnings()
    p = write(tmp_path, "stages:\n  - {name: a, until: {max_steps: 5, max_fraction: 0.5}}\n  - {name: b, min_share: 1.5}\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(p)
    text = "\n".join(exc.value.errors)
    assert "stages[0].until.max_fraction: use either max_steps or max_fraction" in text
    assert "stages[1].min_share: must be in [0, 1)" in text


def test_only_the_demo_filters_its_evaluation_sets():
    stages = Path(__file__).resolve().parents[2] / "stages"
    for recipe in sorted(stages.glob("*.yaml")):
        data = load_recipe(recipe).data
        if recipe.stem == "demo":
            assert data.filter_eval and data.allow_eval_drops
        else:  # before: every recipe inherited the demo's filtered test sets
            assert not data.filter_eval and not data.allow_eval_drops, recipe


def test_lssd_settings_are_checked_per_stage_and_need_evaluations(tmp_path):
    p = write(tmp_path, "distill: {method: lssd, weight: -1, gate: hard, hard_floor: 2}\n"
                        "stages: [{name: a, distill: {method: lssd, gate: soft, level: word}}]\n")
    with pytest.raises(ConfigError) as exc:
        load_recipe(p)
    text = "\n".join(exc.value.errors)
    assert "distill.weight: must be >= 0" in text and "distill.hard_floor: must be in [0, 1]" in text
    assert "stages[0].distill.level: must be one of" in text
    ok = write(tmp_path, "train: {eval_every: 10}\nstages: [{name: a}, {name: b, distill: {method: lssd}}]\n")
    cfg = load_recipe(ok)
    assert [cfg.stage_distill(s).method for s in cfg.resolved_stages()] == ["none", "lssd"]
    missing = write(tmp_path, "stages: [{name: a, distill: {method: lssd}}]\n")
    with pytest.raises(ConfigError, match="train.eval_every: distill.method lssd takes its teachers"):
        load_recipe(missing)
