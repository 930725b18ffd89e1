"""Our SentencePiece model as a `tokenizers` tokenizer that `AutoTokenizer` loads: same pieces,
same ids, the `<2xxx>` target tags as special tokens, eos appended to every source."""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, decoders, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

from pipeline.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

USER_DEFINED = 4  # sentencepiece_model.proto: ModelProto.SentencePiece.Type.USER_DEFINED


def hf_tokenizer(spm_model: Path) -> PreTrainedTokenizerFast:
    """A fast tokenizer that encodes `"<2deu> " + text` as [tag] + sp.encode(text) + [eos].

    The converter follows SentencePiece's normaliser spec; `legacy=True` prefixes every chunk
    between special tokens with "▁", as SentencePiece does to the text after our tag (tested on
    the tokenizer's own corpus). Known differences: a literal tag inside the text (we read it as
    text, the export as the tag), and an output that starts with a byte-fallback space (the
    export's decoder strips it)."""
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(spm_model.read_bytes())
    pieces = [p.piece for p in proto.pieces]
    specials = {PAD_ID: "pad", UNK_ID: "unk", BOS_ID: "bos", EOS_ID: "eos"}
    for i, name in specials.items():
        if getattr(proto.trainer_spec, f"{name}_id") != i:
            raise ValueError(f"{spm_model}: {name}_id is {getattr(proto.trainer_spec, f'{name}_id')}, expected {i}")
    vocab = [(p.piece, p.score) for p in proto.pieces]
    if proto.trainer_spec.model_type == 1:  # unigram
        tk = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    else:
        tk = SpmConverter.build_tokenizer_from_spm_proto(proto, {p: i for i, p in enumerate(pieces)}, legacy=True)
    if tk is None:
        raise ValueError(f"{spm_model}: model type {proto.trainer_spec.model_type} cannot be converted")
    # SentencePiece drops every leading "▁" of an output, the converter's decoder only the first:
    # a hypothesis that starts with blank pieces would decode to spaces instead of "".
    steps = [decoders.Replace("▁", " ")] + ([decoders.ByteFallback()] if proto.trainer_spec.byte_fallback else [])
    steps.append(decoders.Fuse())
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1 << 20))
    tk.decoder = decoders.Sequence(steps)
    tags = [p.piece for p in proto.pieces if p.type == USER_DEFINED and p.piece.startswith("<2")]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t in [pieces[i] for i in sorted(specials)] + tags])
    eos = pieces[EOS_ID]
    tk.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B {eos}",
                                                      special_tokens=[(eos, EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=pieces[PAD_ID], unk_token=pieces[UNK_ID],
                                   bos_token=pieces[BOS_ID], eos_token=eos, additional_special_tokens=tags)
