"""Per-stage reports: schema, numbers against sacrebleu itself, regeneration, the trainer's hook,
the CLI wiring and the optional TensorBoard writer."""

import argparse
import base64
import builtins
import json
import re

import jsonschema
import pytest
import torch
from sacrebleu.metrics import BLEU, CHRF

from pipeline.data.prepare import load_corpus
from pipeline.report.commands import add_report_commands, run_report_command
from pipeline.report.stage_report import build_report, load_run_data, read_lines, validate, write_stage_report
from pipeline.rundir.layout import RunDir
from pipeline.train.tensorboard import TensorBoardLog, flatten


def stage_reports(run_dir):
    return [json.loads(p.read_text()) for p in sorted((run_dir / "reports").glob("stage-*.json"))]


def numbers(report):
    """The evaluation numbers of a report (timings left out)."""
    return {s: {k: v for k, v in sp.items() if k != "eval_seconds"} for s, sp in report["splits"].items()}


def test_reports_validate_and_hold_every_stage(run_copy):
    index = build_report(run_copy)
    reports = stage_reports(run_copy)
    assert [(r["stage"]["index"], r["stage"]["name"]) for r in reports] == [(0, "hrl"), (1, "mix")]
    for rep in reports:
        validate(rep)
        assert set(rep["splits"]) == {"dev", "test"}
        assert set(rep["splits"]["dev"]["directions"]) == {"eng-rev", "eng-upp", "eng-pig"}
        assert set(rep["splits"]["test"]["averages"]) == {"all", "hrl", "lrl"}
    first, second = reports
    assert first["previous_stage"] is None and first["splits"]["test"]["directions"]["eng-rev"]["delta"] is None
    assert second["previous_stage"]["name"] == "hrl"
    assert first["stage"]["end"]["reason"] == "monitor" and first["stage"]["end"]["monitor"] == "plateau"
    assert second["stage"]["start_step"] == first["stage"]["end_step"]
    assert second["stage"]["directions"] == ["eng-rev", "eng-upp", "eng-pig"]
    assert second["training"]["steps"] == second["stage"]["end_step"] - second["stage"]["start_step"]
    assert second["training"]["tokens"] > 0 and second["training"]["tokens_per_s"] > 0
    md = (run_copy / "reports" / "stage-1-mix.md").read_text()
    assert "## test" in md and "eng-pig" in md and "avg lrl" in md and "version:" in md
    assert index == run_copy / "reports" / "index.html"

    broken = json.loads(json.dumps(second))
    broken["splits"]["test"]["directions"]["eng-rev"]["bleu"] = 101
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    del broken["splits"]["dev"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_numbers_equal_sacrebleu_on_the_saved_hypotheses(run_copy):
    build_report(run_copy)
    run = RunDir(run_copy)
    recipe = run.load_config()
    corpus = load_corpus(recipe, run.tokenizer, lambda _m: None)  # the references straight from the corpus
    previous = None
    for rep in stage_reports(run_copy):
        for split, sp in rep["splits"].items():
            for name, e in sp["directions"].items():
                hyps = read_lines(run_copy / e["hypotheses"])
                refs = corpus.splits[split][name].texts["tgt"][: recipe.eval.max_sentences]
                assert len(hyps) == len(refs) == e["sentences"] == 20
                bleu, chrf = BLEU(), CHRF()
                assert e["bleu"] == round(bleu.corpus_score(hyps, [refs]).score, 2)
                assert e["chrf"] == round(chrf.corpus_score(hyps, [refs]).score, 2)
                assert e["bleu_signature"] == str(bleu.get_signature()) == sp["signatures"]["bleu"]
                assert e["chrf_signature"] == str(chrf.get_signature()) == sp["signatures"]["chrf"]
                assert read_lines(run_copy / e["references"]) == refs
                if previous is not None:
                    before = previous["splits"][split]["directions"][name]
                    assert e["delta"]["bleu"] == round(e["bleu"] - before["bleu"], 2)
                    assert e["delta"]["loss"] == round(e["loss"] - before["loss"], 4)
            for group, avg in sp["averages"].items():
                members = [e for e in sp["directions"].values() if group == "all" or e["group"] == group]
                assert avg["directions"] == len(members)
                assert avg["chrf"] == round(sum(e["chrf"] for e in members) / len(members), 2)
        previous = rep


def test_regenerating_from_the_same_checkpoints_gives_the_same_numbers(run_copy):
    build_report(run_copy)
    first = [numbers(r) for r in stage_reports(run_copy)]
    build_report(run_copy, reevaluate=True)  # decode every checkpoint again
    assert [numbers(r) for r in stage_reports(run_copy)] == first


def test_a_partial_evaluation_on_disk_is_redone(run_copy):
    """`mmtc eval --max-sentences 5` overwrites dev.json with 5 sentences; the report must not use it."""
    tag = sorted(p.name for p in (run_copy / "checkpoints").glob("*-mix-final"))[0]
    ev_path = run_copy / "eval" / tag / "dev.json"
    ev = json.loads(ev_path.read_text())
    for name, e in ev["directions"].items():
        e["sentences"] = 5
        hyp = run_copy / "eval" / tag / "dev" / f"{name}.hyp"
        hyp.write_text("".join(line + "\n" for line in read_lines(hyp)[:5]))
    ev_path.write_text(json.dumps(ev))
    build_report(run_copy)
    rep = json.loads((run_copy / "reports" / "stage-1-mix.json").read_text())
    assert {e["sentences"] for e in rep["splits"]["dev"]["directions"].values()} == {20}


def test_index_embeds_every_figure_and_saves_it(run_copy):
    index = build_report(run_copy)
    page = index.read_text()
    plots = sorted(p.name for p in (run_copy / "reports" / "plots").glob("*.png"))
    assert plots == ["dev-loss.png", "grad-similarity.png", "sampling.png", "scores-dev.png", "scores-test.png",
                     "throughput.png"]
    uris = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert sorted(uris) == sorted(base64.b64encode((run_copy / "reports" / "plots" / p).read_bytes()).decode()
                                  for p in plots)
    for text in ("plateau", "eng-pig", "too_long" if "too_long" in (run_copy / "data_summary.json").read_text()
                 else "dropped", "config.yaml", "tokens/s", "sacrebleu", "stage-1-mix.json"):
        assert text in page, text
    for href in re.findall(r"href='([^']+)'", page):
        assert (index.parent / href).is_file(), href


def test_stage_end_without_figures_writes_the_tables_and_keeps_earlier_pngs(run_copy):
    """eval.figures: false (the test recipes' setting): the trainer's stage-end index has no <img>,
    says how to draw them, and leaves the PNGs of an earlier `mmtc report` alone."""
    build_report(run_copy)
    pngs = {p.name: p.read_bytes() for p in (run_copy / "reports" / "plots").glob("*.png")}
    run = RunDir(run_copy)
    recipe = run.load_config()
    assert recipe.eval.figures is False
    corpus = load_corpus(recipe, run.tokenizer, lambda _m: None)
    st = load_run_data(run).stages[1]
    write_stage_report(run, corpus, recipe, st.index, st.tag, torch.device("cpu"))
    page = (run_copy / "reports" / "index.html").read_text()
    assert "<img " not in page and f"mmtc report {run_copy}" in page and "eng-pig" in page
    assert {p.name: p.read_bytes() for p in (run_copy / "reports" / "plots").glob("*.png")} == pngs
    assert len(pngs) == 6


def test_trainer_hook_writes_each_stage_at_its_end(run_copy):
    run = RunDir(run_copy)
    recipe = run.load_config()
    corpus = load_corpus(recipe, run.tokenizer, lambda _m: None)
    data = load_run_data(run)
    paths = [write_stage_report(run, corpus, recipe, st.index, st.tag, torch.device("cpu")) for st in data.stages]
    assert [p.name for p in paths] == ["stage-0-hrl.json", "stage-1-mix.json"]
    second = json.loads(paths[1].read_text())
    validate(second)
    assert second["previous_stage"]["name"] == "hrl"  # the first stage's report was on disk
    assert second["splits"]["dev"]["directions"]["eng-pig"]["delta"] is not None
    assert (run_copy / "reports" / "index.html").is_file()
    with pytest.raises(ValueError, match="not step"):
        write_stage_report(run, corpus, recipe, 0, "step99-hrl-final", torch.device("cpu"))


def test_report_command(run_copy, capsys):
    ap = argparse.ArgumentParser()
    add_report_commands(ap.add_subparsers(dest="command"))
    assert run_report_command(ap.parse_args(["report", str(run_copy)])) == 0
    assert "index.html" in capsys.readouterr().out
    args = ap.parse_args(["compare", "x", "y", "--out", "o", "--baseline", "x", "--seeds"])
    assert args.run_dirs == ["x", "y"] and args.baseline == "x" and args.seeds and args.split == "test"


def test_tensorboard_scalars_round_trip(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLog(tmp_path, purge_step=None)
    assert tb.enabled
    row = {"step": 5, "stage": "hrl", "loss": 2.5, "directions": {"eng-rev": {"loss": 2.0, "tokens": 40}},
           "p": {"eng-rev": 0.7}, "policy": {"tau": 5.0}, "grad_cosine": {"tasks": ["a"], "cosine": [[1.0]]}}
    tb.scalars(5, row)
    tb.scalars(10, {"dev_loss": {"eng-rev": 1.5}})
    tb.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "directions/eng-rev/loss", "directions/eng-rev/tokens", "p/eng-rev", "policy/tau",
            "dev_loss/eng-rev"} == tags
    assert [(e.step, e.value) for e in acc.Scalars("dev_loss/eng-rev")] == [(10, 1.5)]


def test_tensorboard_is_a_no_op_without_the_package(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("TensorBoard logging requires TensorBoard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    tb = TensorBoardLog(tmp_path)
    assert not tb.enabled
    tb.scalars(1, {"loss": 1.0})
    tb.close()
    assert not (tmp_path / "tensorboard").exists()
    assert flatten({"a": {"b": 1, "c": "x", "d": None, "e": True}, "f": 2.5}) == {"a/b": 1.0, "f": 2.5}


def test_stage_end_evaluation_can_be_switched_off(tmp_path, mmtc_env):
    """eval.stage_end: false (timing runs): no stage-end decoding and no reports; the run's final
    evaluation (eval.splits) still happens, and `mmtc report` can write the reports later."""
    import subprocess
    import sys

    from corpus_factory import two_stage_recipe, write_corpus

    recipe = two_stage_recipe(tmp_path, write_corpus(tmp_path), extra="eval: {stage_end: false}\n")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), "--run-dir", str(run)],
                          env=mmtc_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (run / "reports").exists()
    evals = sorted(p.relative_to(run / "eval").as_posix() for p in (run / "eval").glob("*/*.json"))
    assert evals == [f"{sorted(p.name for p in (run / 'eval').iterdir())[-1]}/test.json"], evals
