"""The model card (README.md) of an export: what it was trained on, how, how well, how to call it."""

from __future__ import annotations

import json
from typing import Any

from pipeline.rundir.layout import RunDir

METRICS = (("bleu", "BLEU"), ("chrf", "chrF"), ("chrfpp", "chrF++"), ("ter", "TER"))


def _scores(run: RunDir, tag: str) -> list[str]:
    path = run.eval_dir(tag) / "test.json"
    if not path.is_file():
        return [f"No test-set evaluation of `{tag}` in the run; `mmtc eval {run.path} --split test "
                f"--checkpoint {tag}` writes one, and a new export then carries it."]
    res = json.loads(path.read_text())
    dirs: dict[str, Any] = res["directions"]
    cols = [(k, name) for k, name in METRICS if any(k in e for e in dirs.values())]
    lines = ["| direction | sentences | " + " | ".join(n for _, n in cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    for d, e in dirs.items():
        scored = f"{e['sentences']} of {e['of']}" if e.get("of") not in (None, e["sentences"]) else str(e["sentences"])
        lines.append(f"| {d} | {scored} | " + " | ".join(f"{e[k]:.2f}" if k in e else "" for k, _ in cols) + " |")
    signatures = {f"{name}: `{e[k + '_signature']}`" for e in dirs.values() for k, name in cols
                  if f"{k}_signature" in e}
    lines += ["", "sacrebleu signatures: " + "; ".join(sorted(signatures)) + "."]
    if any(e.get("of") not in (None, e["sentences"]) for e in dirs.values()):
        lines.append("Only part of some test sets was scored (the recipe's `eval.max_sentences` or filters).")
    return lines


def _corpus(run: RunDir) -> list[str]:
    if not run.data_summary.is_file():
        return ["(the run has no data_summary.json)"]
    summary = json.loads(run.data_summary.read_text())
    lines = ["| direction | group | train pairs | dev | test |", "|---|---|---:|---:|---:|"]
    for d, e in summary["directions"].items():
        cells = [str(e.get(s, {}).get("pairs", "eval-only" if s == "train" and e.get("eval_only") else ""))
                 for s in ("train", "dev", "test")]
        lines.append(f"| {d} | {e.get('group') or ''} | " + " | ".join(cells) + " |")
    return [f"Manifest: `{summary.get('manifest', '?')}`.", "", *lines]


def model_card(run: RunDir, tag: str, step: int, arch: dict[str, Any], languages: list[str], params: int,
               eval_cfg: dict[str, Any], fmt: str, extra: list[str], where: str) -> str:
    example = languages[-1] if languages else "xxx"
    usage = USAGE_HF if fmt == "hf" else USAGE_CT2
    recipe = run.config.read_text() if run.config.is_file() else "(no config.yaml)"
    lines = [
        f"# {run.path.name}: a multilingual translation model from mmt-curriculum", "",
        f"Checkpoint `{tag}` (step {step}) of the run `{run.path}`, exported as "
        f"{'a `transformers` Pegasus model' if fmt == 'hf' else 'a CTranslate2 model'}. "
        f"{params:,} parameters: d_model {arch['d_model']}, {arch['encoder_layers']} encoder and "
        f"{arch['decoder_layers']} decoder layers, {arch['heads']} heads, FFN {arch['ffn_dim']}, pre-LN, "
        "tied embeddings, sinusoidal positions.", "",
        "## How to call it", "",
        f"The target language is a tag at the head of the source: `<2{example}>` translates into "
        f"`{example}`. Tags of this model: {', '.join(f'`<2{lang}>`' for lang in languages)}. "
        "The source ends with `</s>` (the tokenizer appends it); the decoder starts with `<s>` "
        "(id 2) and no token is forced. `<pad>` and `<s>` never appear in an output.", "",
        usage.replace("DIR", where).replace("{lang}", example), "",
        f"Outputs equal to `mmtc translate` (greedy): cap each output at "
        f"floor({eval_cfg['max_len_a']} × source tokens + {eval_cfg['max_len_b']}) tokens, source tokens "
        "counting the tag and `</s>`. The run evaluated with beam "
        f"{eval_cfg['beam']} and length penalty {eval_cfg['length_penalty']}.", "",
        *extra,
        "## Test scores", "", *_scores(run, tag), "",
        "## Training data", "", *_corpus(run), "",
        "## Recipe", "", "```yaml", recipe.rstrip(), "```", "",
    ]
    return "\n".join(lines)


USAGE_HF = '''```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("DIR")
model = AutoModelForSeq2SeqLM.from_pretrained("DIR")
batch = tok(["<2{lang}> The cat sees the dog."], return_tensors="pt", padding=True)
out = model.generate(**batch, max_new_tokens=128)   # num_beams, suppress_tokens: generation_config.json
print(tok.batch_decode(out, skip_special_tokens=True))
```'''

USAGE_CT2 = '''```python
import ctranslate2, sentencepiece as spm

sp = spm.SentencePieceProcessor(model_file="DIR/spm.model")
translator = ctranslate2.Translator("DIR", device="cpu")     # compute_type: see below
source = ["<2{lang}>"] + sp.encode("The cat sees the dog.", out_type=str) + ["</s>"]
result = translator.translate_batch([source], beam_size=1, max_decoding_length=128,
                                    suppress_sequences=[["<pad>"], ["<s>"]])
print(sp.decode(result[0].hypotheses[0]))
```'''
