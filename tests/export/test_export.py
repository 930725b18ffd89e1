"""`mmtc export`: a tiny trained run as a Hugging Face model (loaded and run by a plain
`transformers` script) and as CTranslate2 models; greedy outputs equal to `mmtc eval`'s."""

import json
import subprocess
import sys

import pytest
from sacrebleu.metrics import BLEU

pytestmark = pytest.mark.slow
N = 32  # sentences per direction (tiny_run's eval)


def mmtc(args, env, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def exported(tiny_run, mmtc_env):
    root, run, tag = tiny_run
    mmtc(["export", str(run), "--format", "hf", "--out", str(root / "hf")], mmtc_env, root)
    from pipeline.export.export import export_ctranslate2  # in-process: the CLI path is the hf export above

    for q in ("float32", "int8"):
        export_ctranslate2(run, root / f"ct2-{q}", quantization=q)
    scores = json.loads((run / "eval" / tag / "test.json").read_text())
    return root, run, tag, scores


# Run by a fresh interpreter that never imports our package: what a user of the export does.
HF_SCRIPT = r"""
import json, math, sys
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
model_dir, requests = sys.argv[1], json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
a, b = json.load(open(f"{model_dir}/mmtc_export.json"))["max_len"].values()
out = {}
for lang, lines in requests.items():
    batch = tok([f"<2{lang}> {s}" for s in lines], return_tensors="pt", padding=True)
    caps = [math.floor(a * n + b) for n in batch["attention_mask"].sum(1).tolist()]
    with torch.inference_mode():
        ids = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=max(caps))
    hyps = []
    for row, cap in zip(ids.tolist(), caps):
        row = row[1:]
        row = row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        hyps.append(tok.decode(row[:cap], skip_special_tokens=True))
    out[lang] = hyps
assert not any(m == "pipeline" or m.startswith("pipeline.") for m in sys.modules), "imported mmt-curriculum"
print(json.dumps(out))
"""

CT2_SCRIPT = r"""
import json, math, sys
import ctranslate2, sentencepiece as spm
model_dir, requests = sys.argv[1], json.loads(sys.stdin.read())
sp = spm.SentencePieceProcessor(model_file=f"{model_dir}/spm.model")
tr = ctranslate2.Translator(model_dir, device="cpu", compute_type="default", inter_threads=1, intra_threads=1)
a, b = json.load(open(f"{model_dir}/mmtc_export.json"))["max_len"].values()
out = {}
for lang, lines in requests.items():
    sources = [[f"<2{lang}>"] + sp.encode(s, out_type=str) + ["</s>"] for s in lines]
    caps = [math.floor(a * len(s) + b) for s in sources]
    res = tr.translate_batch(sources, beam_size=1, max_decoding_length=max(caps),
                             suppress_sequences=[["<pad>"], ["<s>"]])
    out[lang] = [sp.decode(r.hypotheses[0][:cap]) for r, cap in zip(res, caps)]
assert not any(m == "pipeline" or m.startswith("pipeline.") for m in sys.modules), "imported mmt-curriculum"
print(json.dumps(out))
"""


def run_plain(script, model_dir, requests, cwd):
    proc = subprocess.run([sys.executable, "-c", script, str(model_dir)], input=json.dumps(requests),
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def requests_and_ours(root, run, tag):
    langs = ("rev", "upp", "pig")
    req = {lang: (root / f"eng-{lang}" / "test.eng").read_text().splitlines()[:N] for lang in langs}
    ours = {lang: (run / "eval" / tag / "test" / f"eng-{lang}.hyp").read_text().splitlines() for lang in langs}
    assert all(len(ours[lang]) == N for lang in langs)
    return req, ours


def test_hf_export_loads_in_plain_transformers_and_decodes_as_we_do(exported):
    root, run, tag, scores = exported
    req, ours = requests_and_ours(root, run, tag)
    theirs = run_plain(HF_SCRIPT, root / "hf", req, root)
    for lang in req:
        assert theirs[lang] == ours[lang], lang
        refs = (root / f"eng-{lang}" / f"test.{lang}").read_text().splitlines()[:N]
        bleu = BLEU().corpus_score(theirs[lang], [refs]).score
        assert abs(bleu - scores["directions"][f"eng-{lang}"]["bleu"]) <= 0.1
    files = {p.name for p in (root / "hf").iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= files
    card = (root / "hf" / "README.md").read_text()
    assert f"| eng-rev | {N} of 40 | {scores['directions']['eng-rev']['bleu']:.2f} |" in card
    assert scores["directions"]["eng-rev"]["bleu_signature"] in card and "<2pig>" in card


def test_ctranslate2_exports_decode_as_we_do(exported):
    root, run, tag, _ = exported
    req, ours = requests_and_ours(root, run, tag)
    fp32 = run_plain(CT2_SCRIPT, root / "ct2-float32", req, root)
    assert fp32 == ours
    int8 = run_plain(CT2_SCRIPT, root / "ct2-int8", req, root)
    cfg = json.loads((root / "ct2-int8" / "config.json").read_text())
    assert cfg["decoder_start_token"] == "<s>" and cfg["bos_token"] == "<s>"
    assert json.loads((root / "ct2-int8" / "mmtc_export.json").read_text())["quantization"] == "int8"
    same = sum(x == y for lang in req for x, y in zip(int8[lang], ours[lang]))
    # int8 weights change some argmaxes of this tiny model; most outputs survive.
    assert same >= 0.5 * 3 * N, same


def test_export_never_overwrites(exported, capsys):
    from pipeline.cli import main
    from pipeline.export.export import export_hf

    root, run, _, _ = exported
    before = sorted(p.name for p in (root / "hf").iterdir())
    with pytest.raises(FileExistsError, match="never overwrites"):
        export_hf(run, root / "hf")
    assert sorted(p.name for p in (root / "hf").iterdir()) == before
    assert main(["export", str(run), "--format", "hf", "--quantization", "int8", "--out", str(root / "x")]) == 2
    assert "--quantization is for --format ctranslate2" in capsys.readouterr().err and not (root / "x").exists()
