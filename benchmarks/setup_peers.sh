#!/usr/bin/env bash
# A venv with the throughput peers that do not share our dependency pins: fairseq 0.12.2 (old
# hydra-core/omegaconf) on the same CPU torch, plus transformers. Used by benchmarks/throughput.py.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=benchmarks/work/peers
python3.11 -m venv "$venv"
"$venv/bin/pip" install -q "pip<24.1"   # omegaconf 2.0.6's metadata is rejected by newer pip
"$venv/bin/pip" install -q torch==2.13.0 transformers fairseq==0.12.2
# Python 3.11 rejects an unhashable dataclass instance as a field default, which fairseq 0.12.2 and
# hydra-core 1.0.7 use throughout; restore 3.10's rule (a shared default instance) at start-up.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$site/sitecustomize.py" <<'PY'
import dataclasses

_get_field = dataclasses._get_field


def _lenient_get_field(cls, a_name, a_type, *rest):
    default = cls.__dict__.get(a_name, dataclasses.MISSING)
    if isinstance(default, dataclasses.Field):
        default = default.default
    if dataclasses.is_dataclass(default) and not isinstance(default, type) and type(default).__hash__ is None:
        type(default).__hash__ = object.__hash__
    return _get_field(cls, a_name, a_type, *rest)


dataclasses._get_field = _lenient_get_field
PY
"$venv/bin/python" -c "import fairseq_cli.train" && echo "fairseq ready in $venv"
