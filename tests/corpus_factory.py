"""A small synthetic parallel corpus whose directions are learnable rules, for fast CPU tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ["the", "cat", "dog", "house", "tree", "river", "city", "red", "blue", "green", "small", "big", "old", "new", "walks", "sees", "eats", "likes", "and", "with", "near", "under", "over", "one", "two", "three", "four", "five", "bird", "fish", "stone", "road", "light"]


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(n)]


RULES = {
    "rev": lambda s: " ".join(reversed(s.split())),
    "upp": lambda s: " ".join(w.upper() + "x" for w in s.split()),
    "pig": lambda s: " ".join(w[1:] + w[0] + "ay" for w in s.split()),
}


def write_corpus(root: Path, sizes: dict[str, int] | None = None, dev: int = 40, test: int = 40,
                 groups: dict[str, str] | None = None) -> Path:
    """Write eng->X text files and a manifest; returns the manifest path."""
    sizes = sizes or {"rev": 600, "upp": 300, "pig": 80}
    groups = groups or {"rev": "hrl", "upp": "hrl", "pig": "lrl"}
    lines = ["name: synthetic", "directions:"]
    for i, (lang, n) in enumerate(sizes.items()):
        d = root / f"eng-{lang}"
        d.mkdir(parents=True, exist_ok=True)
        for j, (split, k) in enumerate((("train", n), ("dev", dev), ("test", test))):
            src = sentences(k, seed=100 * i + j)
            (d / f"{split}.eng").write_text("".join(s + "\n" for s in src))
            (d / f"{split}.{lang}").write_text("".join(RULES[lang](s) + "\n" for s in src))
        lines += ["  - src: eng", f"    tgt: {lang}", f"    group: {groups[lang]}"]
        for split in ("train", "dev", "test"):
            lines.append(f"    {split}: {{src: eng-{lang}/{split}.eng, tgt: eng-{lang}/{split}.{lang}}}")
    path = root / "manifest.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_recipe(root: Path, manifest: Path, extra: str = "") -> Path:
    text = f"""name: tiny
seed: 3
data: {{corpus: {manifest}, max_len: 48, max_len_ratio: 9.0, cache_dir: {root / 'cache'}}}
tokenizer: {{vocab_size: 400}}
model: {{preset: tiny, d_model: 64, encoder_layers: 2, decoder_layers: 2, heads: 4, ffn_dim: 128, dropout: 0.0}}
sampling: {{kind: temperature, params: {{temperature: 2.0}}}}
train: {{max_steps: 40, max_tokens: 600, lr: 3.0e-3, warmup_steps: 10, log_every: 5, chunk_steps: 8}}
eval: {{beam: 2, max_sentences: 20, figures: false}}
{extra}
"""
    path = root / "recipe.yaml"
    path.write_text(text)
    return path


TWO_STAGE = """
stages:
  - name: hrl
    directions: [group:hrl]
    sampling: {kind: proportional}
    until:
      max_steps: 20
      any: [{monitor: plateau, directions: [group:hrl], patience: 1, min_delta: 0.5, relative: true}]
  - name: mix
    directions: [all]
    optimizer: reset
    lr_schedule: reset
    warmup_steps: 2
    until: {max_steps: 6}
"""


# The two-stage recipe's mix stage made longer, so that a warning (or a kill) sent after step k still
# finds the run training (the Slurm and two-host tests).
LONGER_MIX = ["--set", "stages.1.until.max_steps=30"]
# One task per "host" takes all the machine's cores (cores / local ranks), a reference's two local
# ranks half each: other thread counts sum matmuls in another order. The same count, the same bits.
ONE_THREAD = ["--set", "train.threads=1"]


def two_stage_recipe(root: Path, manifest: Path, train: str = "", extra: str = "") -> Path:
    """hrl until a (quick) plateau on the hrl dev loss, then the mix; about 12 steps in all."""
    path = tiny_recipe(root, manifest, extra=TWO_STAGE + extra)
    text = path.read_text().replace(
        "train: {max_steps: 40, max_tokens: 600, lr: 3.0e-3, warmup_steps: 10, log_every: 5, chunk_steps: 8}",
        "train: {max_steps: 40, max_tokens: 600, lr: 3.0e-3, warmup_steps: 4, log_every: 1, chunk_steps: 4,"
        f" eval_every: 3, save_every: 2, keep_last: 50{', ' + train if train else ''}}}")
    path.write_text(text)
    return path
