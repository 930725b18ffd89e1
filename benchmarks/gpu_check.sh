#!/usr/bin/env bash
# One prepared run of the benchmarks on a lent GPU machine (one NVIDIA H200 here), inside about
# 9 minutes of wall time, every part time-boxed; a part that fails or runs out of time is recorded
# and the next one runs.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from any directory
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: print the commands and their time boxes
#   bash benchmarks/gpu_check.sh --warm-cache  # here, on the CPU, before: see "Corpus cache" below
#
# Parts (each writes its JSON under $OUT, default benchmarks/results/gpu):
#   hardware    hardware.json: nvidia-smi (query and -q summary), torch, CUDA, cuDNN, packages present
#   throughput  throughput-base-bf16.json, throughput-big-bf16.json: benchmarks/throughput.py, bf16,
#               MFU against the GPU's measured bf16 matmul peak, mmtc's engine and plain loop against
#               HF MarianMT's plain loop on the same batches
#   distill     distill_overhead.json: benchmarks/method_overhead.py --group distill (LSSD)
#   surgery     surgery_overhead.json: benchmarks/method_overhead.py --group surgery
#   decoding    decoding.json: benchmarks/decoding.py --device cuda
# and then summary.md (hardware line, each part's status and headline numbers) and gpu_check.log
# (every part's output). That is 8 files: the most the device machine sends back from $OUT.
#
# Python: no downloads. The first of $PYTHON, .venv/bin/python and python3 whose torch sees CUDA
# (a .venv made here is git-ignored and does not travel; the H200 image's python3 has torch with
# CUDA and transformers, not deepspeed or ctranslate2). Wheels in .whl/ (carried) are installed
# offline into /tmp/gpu_check_site first. None with CUDA: a message and exit 2. A part whose
# packages are missing is recorded as skipped; decoding runs without CTranslate2 where it is missing.
#
# Corpus cache: the throughput and overhead parts tokenise the demo corpus once per setting (about
# half a minute each on 16 cores). `--warm-cache` prepares both here into benchmarks/work/gpu-cache;
# carry that folder and the GPU run uses it (it is used whenever it exists, else $MMTC_CACHE or
# the default cache).
#
# Environment: OUT (results folder), PYTHON, GPU_CHECK_BUDGET (seconds in all, default 530),
# TP_MAX_TOKENS (padded tokens per throughput batch, default 16384), OVERHEAD_STEPS (default 40).
# Exit status: 0 all parts ok, 1 some part failed/timed out/skipped, 2 no Python with CUDA.

set -u -o pipefail

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; }

DRY=0
WARM=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        --warm-cache) WARM=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg' (--dry-run, --warm-cache, --help)" >&2; exit 64 ;;
    esac
done

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT_DIR=${OUT:-benchmarks/results/gpu}
WORK=benchmarks/work/gpu
STATUS=$WORK/status.tsv
LOG=$OUT_DIR/gpu_check.log
BUDGET=${GPU_CHECK_BUDGET:-530}
RESERVE=15 # seconds kept for the summary
TP_MAX_TOKENS=${TP_MAX_TOKENS:-16384}
OVERHEAD_STEPS=${OVERHEAD_STEPS:-40}
NPROC=$(nproc 2>/dev/null || echo 4)
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" # `pipeline` without an editable install
if [[ -d benchmarks/work/gpu-cache ]]; then
    export MMTC_CACHE=$ROOT/benchmarks/work/gpu-cache
fi

if ((WARM)); then
    PY=${PYTHON:-.venv/bin/python}
    [[ -x $PY ]] || PY=python3
    export MMTC_CACHE=$ROOT/benchmarks/work/gpu-cache
    mkdir -p "$MMTC_CACHE"
    echo "preparing the corpora of throughput.py and method_overhead.py into $MMTC_CACHE with $PY"
    "$PY" - <<'EOF' || exit 1
from pipeline.curriculum.recipe import load_recipe
from pipeline.data.prepare import prepare_corpus

for sets in (["data.max_len=64", "tokenizer.vocab_size=8000"], []):  # throughput.py's defaults; the demo's own
    r = load_recipe("stages/demo.yaml", sets)
    prepare_corpus(r.data, r.tokenizer, log=lambda _m: None)
    print("prepared", sets or "stages/demo.yaml as is")
EOF
    echo "carry benchmarks/work/gpu-cache ($(du -sh "$MMTC_CACHE" | cut -f1)) with the run"
    exit 0
fi

# --- Python ---------------------------------------------------------------------------------
PY=""
if ((DRY)); then
    PY=${PYTHON:-.venv/bin/python}
    echo "dry run: python = first of \$PYTHON, .venv/bin/python, python3 whose torch sees CUDA (shown as $PY)"
    [[ -n $(compgen -G ".whl/*.whl") ]] && echo "dry run: would install .whl/*.whl offline into /tmp/gpu_check_site"
else
    for cand in "${PYTHON:-}" .venv/bin/python python3; do
        [[ -n $cand ]] || continue
        if "$cand" -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
            PY=$cand
            break
        fi
        echo "python '$cand': not found, no torch, or torch sees no CUDA device"
    done
    if [[ -z $PY ]]; then
        cat >&2 <<EOF
gpu_check.sh: no Python here has a torch that sees a CUDA GPU (tried \$PYTHON, .venv/bin/python,
python3). This script downloads nothing. On a GPU machine: make .venv with a CUDA build of torch and
\`pip install -e .[dev]\`, or set PYTHON, or carry the missing packages as wheels in .whl/.
EOF
        exit 2
    fi
    if [[ -n $(compgen -G ".whl/*.whl") ]]; then
        echo "installing .whl/*.whl offline into /tmp/gpu_check_site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu_check_site .whl/*.whl && export PYTHONPATH="/tmp/gpu_check_site:$PYTHONPATH"
    fi
    mkdir -p "$OUT_DIR" "$WORK"
    : >"$STATUS"
    : >"$LOG"
    echo "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)'))" | tee -a "$LOG"
fi

# Which of the parts' packages are installed (found, not imported: deepspeed takes seconds to import).
MISSING=" "
if ((!DRY)); then
    MISSING=" $("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("deepspeed", "transformers", "ctranslate2") if u.find_spec(m) is None))') "
    missing=${MISSING:1:-1}
    echo "missing packages: ${missing:-none}" | tee -a "$LOG"
fi
has() { [[ $MISSING != *" $1 "* ]]; }

record() { # name status seconds file
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$STATUS"
    echo "--- $1: $2 (${3}s)" | tee -a "$LOG"
}

FAILED=0
# part NAME CAP_SECONDS JSON_FILE COMMAND...: run COMMAND under a time box of CAP_SECONDS or what
# is left of the budget, whichever is less; its output goes to the log and the terminal.
part() {
    local name=$1 cap=$2 file=$3 left box begin rc status
    shift 3
    if ((DRY)); then
        printf '[%s] timeout %ss:' "$name" "$cap"
        printf ' %q' "$@"
        printf '\n'
        return
    fi
    left=$((DEADLINE - $(date +%s) - RESERVE))
    box=$((cap < left ? cap : left))
    if ((box < 20)); then
        record "$name" "skipped (out of time: ${left}s left)" 0 "$file"
        FAILED=1
        return
    fi
    echo "=== $name (time box ${box}s): $*" | tee -a "$LOG"
    begin=$(date +%s)
    # timeout signals its whole process group: method_overhead's `mmtc run` children go with it.
    timeout -k 10 "$box" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out (${box}s)" ;;
        *) status="failed (exit $rc)" ;;
    esac
    ((rc == 0)) || FAILED=1
    record "$name" "$status" "$(($(date +%s) - begin))" "$file"
}

skip() { # name file reason
    if ((DRY)); then
        echo "[$1] skipped where $3"
        return
    fi
    record "$1" "skipped ($3)" 0 "$2"
    FAILED=1
}

# --- Parts ----------------------------------------------------------------------------------
part hardware 40 hardware.json "$PY" benchmarks/gpu_report.py hardware "$OUT_DIR/hardware.json"

TP=(benchmarks/throughput.py --precision bf16 --threads "$NPROC" --max-tokens "$TP_MAX_TOKENS" --no-fairseq)
declare -A CAP=([base]=110 [big]=90 [distill]=100 [surgery]=120)
for preset in base big; do
    if has deepspeed && has transformers; then
        part "throughput-$preset" "${CAP[$preset]}" "throughput-$preset-bf16.json" \
            "$PY" "${TP[@]}" --preset "$preset" --results "$OUT_DIR/throughput-$preset-bf16.json"
    else
        skip "throughput-$preset" "throughput-$preset-bf16.json" "deepspeed or transformers missing"
    fi
done

for group in distill surgery; do
    if has deepspeed; then
        part "$group" "${CAP[$group]}" "${group}_overhead.json" \
            "$PY" benchmarks/method_overhead.py --group "$group" --steps "$OVERHEAD_STEPS" --precision bf16 \
            --out "$WORK/overhead" --results "$OUT_DIR/${group}_overhead.json"
    else
        skip "$group" "${group}_overhead.json" "deepspeed missing"
    fi
done

if has transformers; then
    NO_CT2=()
    if ((DRY)); then
        echo "dry run: decoding gets --no-ct2 where ctranslate2 is not installed"
    elif ! has ctranslate2; then
        NO_CT2=(--no-ct2)
    fi
    part decoding 70 decoding.json "$PY" benchmarks/decoding.py --device cuda --threads "$NPROC" --reps 5 \
        "${NO_CT2[@]}" --results "$OUT_DIR/decoding.json"
else
    skip decoding decoding.json "transformers missing"
fi

# --- Summary --------------------------------------------------------------------------------
if ((DRY)); then
    echo "[summary] $PY benchmarks/gpu_report.py summary $OUT_DIR $STATUS  -> $OUT_DIR/summary.md"
    echo "dry run: budget ${BUDGET}s (${RESERVE}s kept for the summary), results in $OUT_DIR, log $LOG"
    exit 0
fi
echo "=== summary after $(($(date +%s) - START))s" | tee -a "$LOG"
timeout -k 5 "$RESERVE" "$PY" benchmarks/gpu_report.py summary "$OUT_DIR" "$STATUS" 2>&1 | tee -a "$LOG" ||
    { echo "summary failed; statuses:"; cat "$STATUS"; } | tee -a "$LOG"
exit "$FAILED"
