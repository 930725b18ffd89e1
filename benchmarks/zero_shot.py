"""One-to-many against many-to-one, and zero-shot, on ../shared/data/tatoeba-diverse9 built both
ways: eng->X and X->eng for its nine languages (18 trained directions, from the same files) plus
zero-shot directions among non-English languages, scored at every evaluation and never trained.

    python benchmarks/zero_shot.py build                 # the zero-shot sets and the manifest
    python benchmarks/zero_shot.py train --steps 800 --set train.precision=fp32   # t1, t5, two_stage in turn
    python benchmarks/zero_shot.py collect                # the table: benchmarks/results/zero_shot.json

Zero-shot test sets need one source sentence translated into two languages. The Tatoeba test
sets share almost no English sentence (`build` prints how many pairs each pair of languages
would get: 9 at most), so the zero-shot directions come from FLORES-200 devtest, which is
multi-way parallel (the same 1,012 English sentences in every eng-X folder): lines 1-500 are
their dev set, 501-1012 their test set. FLORES is news and wiki text, longer than Tatoeba's
everyday sentences: out of domain for every direction of this corpus.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

from machine import hardware

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "tatoeba-diverse9"
LANGS = ["deu", "fra", "mar", "bul", "ell", "mkd", "hin", "kor", "bos"]
HRL = ["deu", "fra", "mar"]
ZERO_SHOT = [("deu", "fra"), ("bul", "mkd")]  # each both ways: two high-resource, two related Cyrillic
DEV_LINES = 500
# τ=1 and τ=5 have no monitor, so they skip the dev loss while training (22 dev sets cost about a
# minute per evaluation on 2 cores; the forward passes change nothing in training). The two-stage
# curriculum's plateau monitor needs it: every 100 steps here, not the recipe's 50, for time (its
# patience of 2 evaluations then spans 200 steps). Its first stage's end is not evaluated either
# (eval.stage_end: false; a stage end decodes 22 dev and test sets, 12 minutes here): the final
# checkpoint's test set is scored by `mmtc eval` with the same settings as the others' stage end.
RECIPES = {"t1": ("stages/temperature_t1.yaml", ["train.eval_every=0"]),
           "t5": ("stages/temperature_t5.yaml", ["train.eval_every=0"]),
           "two_stage": ("stages/two_stage.yaml", ["train.eval_every=100", "eval.stage_end=false"])}
CORPUS = ["tokenizer.vocab_size=8000", "data.max_len=48"]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def shared_english(split: str) -> dict[tuple[str, str], int]:
    """Pairs each two non-English languages would get from test sets with a shared English side."""
    eng = {x: set(lines(SHARED / f"eng-{x}" / f"{split}.eng")) for x in LANGS}
    return {(a, b): len(eng[a] & eng[b]) for a, b in itertools.combinations(LANGS, 2)}


def build(work: Path) -> Path:
    shared = shared_english("test")
    best = sorted(shared.items(), key=lambda kv: -kv[1])
    print("Tatoeba test pairs with a shared English source (top 6): "
          + ", ".join(f"{a}-{b} {n}" for (a, b), n in best[:6]) + f"; {sum(1 for n in shared.values() if n == 0)} "
          f"of {len(shared)} language pairs share none")
    flores = {x: lines(SHARED / f"eng-{x}" / "flores.eng") for x in LANGS}
    assert len({tuple(v) for v in flores.values()}) == 1, "FLORES English sides differ: not multi-way parallel"
    data = work / "zero-shot-data"
    for lang in sorted({x for p in ZERO_SHOT for x in p}):
        text = lines(SHARED / f"eng-{lang}" / f"flores.{lang}")
        (data / lang).mkdir(parents=True, exist_ok=True)
        (data / lang / f"dev.{lang}").write_text("".join(s + "\n" for s in text[:DEV_LINES]), encoding="utf-8")
        (data / lang / f"test.{lang}").write_text("".join(s + "\n" for s in text[DEV_LINES:]), encoding="utf-8")
    n_test = len(flores["deu"]) - DEV_LINES
    zero = "\n".join(f"""  - langs: [{a}, {b}]
    eval_only: true
    pattern: "zero-shot-data/{{lang}}/{{split}}.{{lang}}"
    splits: {{dev: dev, test: test}}""" for a, b in ZERO_SHOT)
    manifest = work / "manifest.yaml"
    manifest.write_text(f"""# written by benchmarks/zero_shot.py build
name: tatoeba-diverse9-m2m-zero-shot
pairs:
  - pivot: eng
    langs: [{", ".join(LANGS)}]
    both: true
    pattern: "{SHARED}/eng-{{x}}/{{split}}.{{lang}}"
    group: {{{", ".join(f"{x}: {'hrl' if x in HRL else 'lrl'}" for x in LANGS)}}}
{zero}
""", encoding="utf-8")
    print(f"zero-shot directions: {', '.join(f'{a}-{b}, {b}-{a}' for a, b in ZERO_SHOT)} from FLORES-200 devtest: "
          f"{DEV_LINES} dev and {n_test} test pairs each; manifest {manifest}")
    return manifest


def train(name: str, args: argparse.Namespace) -> None:
    work = Path(args.out)
    recipe, extra = RECIPES[name]
    cmd = [sys.executable, "-m", "pipeline", "run", recipe, "--run-dir", str(work / name), "--overwrite"]
    for s in [f"data.corpus={work / 'manifest.yaml'}", *CORPUS, f"train.max_steps={args.steps}", *extra, *args.set]:
        cmd += ["--set", s]
    with open(work / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
        if "eval.stage_end=false" in extra:
            subprocess.run([sys.executable, "-m", "pipeline", "eval", str(work / name), "--split", "test"], check=True,
                           stdout=log, stderr=subprocess.STDOUT)


def mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 2)


def collect(args: argparse.Namespace) -> None:
    work = Path(args.out)
    rows = []
    for name in RECIPES:
        evals = sorted((work / name / "eval").glob("*/test.json"))
        if not evals:
            continue
        test = json.loads(evals[-1].read_text())
        d = test["directions"]
        row: dict = {"method": name, "checkpoint": evals[-1].parent.name, "directions": d}
        for side, names in (("o2m", [f"eng-{x}" for x in LANGS]), ("m2o", [f"{x}-eng" for x in LANGS])):
            for g, members in (("hrl", HRL), ("lrl", [x for x in LANGS if x not in HRL])):
                pick = [n for n in names if any(m in n.split("-") for m in members)]
                row[f"{side}_{g}"] = {m: mean([d[n][m] for n in pick])
                                      for m in ("bleu", "chrf", "off_target", "off_target_ref")}
        zs = [f"{a}-{b}" for p in ZERO_SHOT for a, b in (p, p[::-1])]
        row["zero_shot"] = {n: {m: d[n][m] for m in ("bleu", "chrf", "off_target", "off_target_ref")} for n in zs}
        rows.append(row)
    out = {"hardware": hardware(), "steps": args.steps, "corpus": str(work / "manifest.yaml"), "rows": rows,
           "command": "python benchmarks/zero_shot.py build && python benchmarks/zero_shot.py train "
                      f"--steps {args.steps} {' '.join('--set ' + x for x in args.set)} && "
                      f"python benchmarks/zero_shot.py collect --steps {args.steps}"}
    dest = HERE / "results" / "zero_shot.json"
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(markdown(rows))
    print(f"wrote {dest}")


def markdown(rows: list[dict]) -> str:
    """The README's two tables: O2M against M2O (BLEU / chrF, and the gain over τ=1), and zero-shot."""
    keys = ["o2m_hrl", "o2m_lrl", "m2o_hrl", "m2o_lrl"]
    out = ["| run | O2M HRL | O2M LRL | M2O HRL | M2O LRL | O2M LRL off-tgt% | M2O LRL off-tgt% |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    base = next((r for r in rows if r["method"] == "t1"), None)
    for r in rows:
        cells = []
        for k in keys:
            v = r[k]
            gain = "" if base is None or r is base else f" ({v['bleu'] - base[k]['bleu']:+.2f})"
            cells.append(f"{v['bleu']:.2f}{gain} / {v['chrf']:.1f}")
        out.append(f"| {r['method']} | " + " | ".join(cells)
                   + "".join(f" | {r[k]['off_target']:.1f} (refs {r[k]['off_target_ref']:.1f})" for k in ("o2m_lrl", "m2o_lrl"))
                   + " |")
    zs = list(rows[0]["zero_shot"]) if rows else []
    out += ["", "| run | " + " | ".join(zs) + " |", "|---|" + "---:|" * len(zs)]
    for r in rows:
        out.append(f"| {r['method']} | " + " | ".join(
            f"{z['bleu']:.2f} / {z['chrf']:.1f} / {z['off_target']:.1f}" for z in r["zero_shot"].values()) + " |")
    out.append("| references' off-tgt% | " + " | ".join(
        f"{z['off_target_ref']:.1f}" for z in rows[0]["zero_shot"].values()) + " |" if rows else "")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["build", "train", "collect"])
    ap.add_argument("--out", default=str(HERE / "work" / "zero_shot"))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--only", default=",".join(RECIPES), help="with train: which recipes, comma-separated")
    ap.add_argument("--set", action="append", default=[], help="more recipe overrides for every run")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.what == "build":
        build(Path(args.out))
    elif args.what == "train":
        for name in args.only.split(","):
            train(name, args)
    else:
        collect(args)


if __name__ == "__main__":
    main()
