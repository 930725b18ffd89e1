"""`mmtc export`: a run's checkpoint as a Hugging Face model directory or a CTranslate2 model.

Both are written into a temporary sibling and renamed into place, so DIR is either absent or
complete; an existing DIR is never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from pipeline.checkpoint.weights import load_model
from pipeline.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, model_digest
from pipeline.export.card import model_card
from pipeline.export.formats import CT2_QUANTIZATIONS
from pipeline.export.hf_model import pegasus_config, to_pegasus
from pipeline.export.hf_tokenizer import hf_tokenizer
from pipeline.rundir.layout import RunDir

CT2_NOTE = ["## CTranslate2", "",
            "Converted with CTranslate2's own `TransformersConverter` from the Hugging Face export "
            "(a Pegasus model), then `bos_token` and `decoder_start_token` in config.json set to `<s>` "
            "(the converter's Pegasus default is `<pad>`). `spm.model` is the run's SentencePiece model; "
            "CTranslate2 takes pieces, so encode with it, put the tag first and `</s>` last.", ""]


def start_decoding_with(ct2_dir: Path, token: str) -> None:
    """CTranslate2's Pegasus converter starts the decoder (and names bos) with the pad token; ours
    starts with bos."""
    path = ct2_dir / "config.json"
    cfg = json.loads(path.read_text())
    cfg["bos_token"] = cfg["decoder_start_token"] = token
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def _fresh(out: Path) -> Path:
    if out.exists():
        raise FileExistsError(f"{out} exists; export writes a new directory and never overwrites one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _write_hf(run: RunDir, tag: str | None, dest: Path, fmt: str, extra: list[str], where: Path) -> dict[str, Any]:
    hf_logging.disable_progress_bar()
    recipe = run.load_config()
    tok = Tokenizer(run.tokenizer)
    model, tag_name = load_model(run, recipe, tok.vocab_size, tok.pad_id, tag)
    meta = json.loads((run.checkpoints / tag_name / "COMMIT.json").read_text())
    ev = recipe.eval
    hf = to_pegasus(model, pegasus_config(model, PAD_ID, BOS_ID, EOS_ID, UNK_ID))
    hf.generation_config = GenerationConfig(
        decoder_start_token_id=BOS_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        suppress_tokens=[PAD_ID, BOS_ID], num_beams=ev.beam, length_penalty=ev.length_penalty,
        max_new_tokens=model.max_positions - 1, forced_eos_token_id=None)
    hf.save_pretrained(dest)
    hf_tokenizer(run.tokenizer).save_pretrained(dest)
    arch = dataclasses.asdict(model.arch)
    card = model_card(run, tag_name, int(meta["step"]), arch, tok.languages, model.num_parameters(),
                      {k: getattr(ev, k) for k in ("beam", "length_penalty", "max_len_a", "max_len_b")}, fmt, extra,
                      str(where))
    (dest / "README.md").write_text(card)
    provenance = {"run": str(run.path.resolve()), "checkpoint": tag_name, "step": int(meta["step"]),
                  "tokenizer_digest": model_digest(run.tokenizer), "languages": tok.languages,
                  "tags": {lang: tok.tag_id(lang) for lang in tok.languages},
                  "max_len": {"a": ev.max_len_a, "b": ev.max_len_b}}
    return provenance


def export_hf(run_dir: str | Path, out: str | Path, tag: str | None = None) -> Path:
    """A directory `AutoModelForSeq2SeqLM` and `AutoTokenizer` load with no import of this package."""
    run, out = RunDir(run_dir), Path(out)
    tmp = _fresh(out)
    try:
        prov = _write_hf(run, tag, tmp, "hf", [], out)
        (tmp / "mmtc_export.json").write_text(json.dumps({"format": "hf", **prov}, indent=1) + "\n")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_ctranslate2(run_dir: str | Path, out: str | Path, tag: str | None = None,
                       quantization: str | None = None) -> Path:
    """A CTranslate2 model directory (model.bin, shared_vocabulary.json, config.json, spm.model)."""
    from ctranslate2.converters import TransformersConverter

    if quantization is not None and quantization not in CT2_QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r}: one of {', '.join(CT2_QUANTIZATIONS)}")
    run, out = RunDir(run_dir), Path(out)
    tmp = _fresh(out)
    hf_dir = tmp.parent / f"{tmp.name}-hf"
    try:
        hf_dir.mkdir()
        note = [*CT2_NOTE, f"Weights: {quantization or 'float32 (as trained, no quantization)'}; "
                "`compute_type` chooses the arithmetic at load time.", ""]
        prov = _write_hf(run, tag, hf_dir, "ctranslate2", note, out)
        TransformersConverter(str(hf_dir)).convert(str(tmp), quantization=quantization, force=True)
        start_decoding_with(tmp, "<s>")
        shutil.copyfile(run.tokenizer, tmp / "spm.model")
        shutil.copyfile(hf_dir / "README.md", tmp / "README.md")
        (tmp / "mmtc_export.json").write_text(json.dumps(
            {"format": "ctranslate2", "quantization": quantization, **prov}, indent=1) + "\n")
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(hf_dir, ignore_errors=True)
    return out
