"""Sequence-level KD (`mmtc distill`): shards over 2 processes, the corpus and manifest it writes,
outputs equal to `mmtc translate`'s, resuming a lost unit, refusing a changed plan, keeping real
pairs, and the Slurm array it would submit."""

import json
import subprocess
import sys

import pytest
import yaml

from corpus_factory import tiny_recipe, write_corpus

pytestmark = pytest.mark.slow


def mmtc(args, env, cwd, check=True, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600, input=stdin)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, mmtc_env):
    root = tmp_path_factory.mktemp("seqkd")
    manifest = write_corpus(root)
    recipe = tiny_recipe(root, manifest)
    recipe.write_text(recipe.read_text().replace("max_steps: 40", "max_steps: 12"))
    mmtc(["run", str(recipe), "--run-dir", str(root / "teacher"), "--set", "eval.splits=[]",
          "--set", "eval.stage_end=false"], mmtc_env, root)
    return root, manifest


def distill(root, manifest, env, out, *extra, check=True):
    return mmtc(["distill", str(root / "teacher"), "--corpus", str(manifest), "--out", str(root / out),
                 "--directions", "eng-pig,eng-upp", "--beam", "2", "--unit", "50", *extra], env, root, check=check)


def test_two_shards_write_a_corpus_a_student_can_use(teacher, mmtc_env):
    root, manifest = teacher
    distill(root, manifest, mmtc_env, "kd", "--nproc", "2")
    out = root / "kd"
    new = yaml.safe_load((out / "manifest.yaml").read_text())
    dirs = {f"{d['src']}-{d['tgt']}": d for d in new["directions"]}
    assert dirs["eng-pig"]["train"] == {"format": "text", "src": str(out / "eng-pig" / "train.eng"),
                                        "tgt": str(out / "eng-pig" / "train.pig")}
    # dev and test, and the train of a direction not distilled, are the originals
    assert dirs["eng-pig"]["dev"]["src"] == str(root / "eng-pig" / "dev.eng")
    assert dirs["eng-rev"]["train"]["tgt"] == str(root / "eng-rev" / "train.rev")
    src = (out / "eng-pig" / "train.eng").read_text().splitlines()
    hyp = (out / "eng-pig" / "train.pig").read_text().splitlines()
    assert src == (root / "eng-pig" / "train.eng").read_text().splitlines() and len(hyp) == 80
    assert hyp != (root / "eng-pig" / "train.pig").read_text().splitlines()  # the teacher's, not the references
    # the same outputs as `mmtc translate` with the same beam
    tr = mmtc(["translate", str(root / "teacher"), "--src", "eng", "--tgt", "pig", "--beam", "2"], mmtc_env, root,
              stdin="\n".join(src[:6]) + "\n")
    assert tr.stdout.splitlines() == hyp[:6]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["directions"]["eng-upp"]["pairs_written"] == 300 and prov["plan"]["eval"]["beam"] == 2
    assert prov["plan"]["checkpoint"].startswith("step")
    check = mmtc(["data", "check", str(out / "manifest.yaml")], mmtc_env, root)
    assert "eng-pig" in check.stdout


def test_a_lost_unit_is_decoded_again_and_a_changed_plan_is_refused(teacher, mmtc_env):
    root, manifest = teacher
    distill(root, manifest, mmtc_env, "kd2")
    out = root / "kd2"
    before = (out / "eng-upp" / "train.upp").read_text()
    units = sorted((out / "work" / "eng-upp").glob("unit-*.json"))
    assert len(units) == 6  # 300 lines in units of 50
    stamps = {u: u.stat().st_mtime_ns for u in units}
    units[3].unlink()
    distill(root, manifest, mmtc_env, "kd2")
    # only the lost unit was decoded again; the corpus is the same
    assert units[3].is_file() and all(u.stat().st_mtime_ns == t for u, t in stamps.items() if u != units[3])
    assert (out / "eng-upp" / "train.upp").read_text() == before
    refused = distill(root, manifest, mmtc_env, "kd2", "--beam", "3", check=False)
    assert refused.returncode != 0 and "planned differently" in refused.stderr and "eval" in refused.stderr


def test_keep_real_adds_the_real_pairs_and_slurm_submits_an_array(teacher, mmtc_env):
    root, manifest = teacher
    distill(root, manifest, mmtc_env, "kd3", "--keep-real", "eng-pig")
    lines = (root / "kd3" / "eng-pig" / "train.pig").read_text().splitlines()
    assert len(lines) == 160 and lines[80:] == (root / "eng-pig" / "train.pig").read_text().splitlines()
    dry = distill(root, manifest, mmtc_env, "kd4", "--slurm", "--shards", "4", "--dry-run")
    assert "#SBATCH --array=0-3" in dry.stdout and '"${SLURM_ARRAY_TASK_ID}/4"' in dry.stdout
    assert "--merge-only" in dry.stdout and "--signal" not in dry.stdout
