import json
import subprocess
import sys

import pytest

from corpus_factory import LONGER_MIX, two_stage_recipe, write_corpus


@pytest.fixture(scope="session")
def two_rank_ref(tmp_path_factory, mmtc_env):
    """The two-stage recipe trained uninterrupted as 2 ranks on this host (`mmtc run --nproc 2`), the
    reference of the Slurm and two-host runs: (root with the corpus, recipe, run dir, the step the
    hrl stage ended at)."""
    root = tmp_path_factory.mktemp("two-rank")
    recipe = two_stage_recipe(root, write_corpus(root))
    ref = root / "ref"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), "--run-dir", str(ref), "--nproc", "2",
                           *LONGER_MIX], env=mmtc_env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(x) for x in (ref / "events.jsonl").read_text().splitlines()]
    switch = next(e["step"] for e in events if e["event"] == "stage_end" and e["stage"] == "hrl")
    return root, recipe, ref, switch
