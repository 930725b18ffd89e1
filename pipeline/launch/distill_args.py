"""`mmtc distill`'s arguments (no torch here: the parser is built on every `mmtc` call)."""

from __future__ import annotations

from typing import Any

from pipeline.launch.slurm import add_slurm_arguments


def add_distill_command(sub: Any) -> None:
    ds = sub.add_parser("distill", help="sequence-level KD: decode a corpus's training sources with a teacher run "
                                        "into a new corpus and manifest")
    ds.add_argument("teacher_run", help="the teacher's run directory")
    ds.add_argument("--corpus", required=True, help="the manifest whose training sources are decoded")
    ds.add_argument("--out", required=True, help="the new corpus directory (manifest.yaml, provenance.json)")
    ds.add_argument("--directions", default="all", help="comma-separated directions or group:NAME (default all)")
    ds.add_argument("--keep-real", default="", help="directions (or 'all') whose real pairs are kept beside the "
                                                   "distilled ones")
    ds.add_argument("--beam", type=int, default=4)
    ds.add_argument("--checkpoint", help="the teacher's checkpoint tag (default: its latest committed one)")
    ds.add_argument("--unit", type=int, default=1000, help="source lines per unit of resumable work (divides 20000)")
    ds.add_argument("--nproc", type=int, default=1, help="local processes, each decoding one shard")
    ds.add_argument("--shard", metavar="K/N", help="decode only shard K of N (what each process or array element runs)")
    ds.add_argument("--merge-only", action="store_true", help="only write the corpus from finished units")
    ds.add_argument("--slurm", action="store_true", help="submit the shards as a Slurm job array (--shards of them) "
                                                         "and the merge as a job after them")
    ds.add_argument("--shards", type=int, default=0, help="with --slurm: array elements (default: --nproc)")
    add_slurm_arguments(ds)
