#!/usr/bin/env bash
# flora's GPU measurements, in one run on a machine with an NVIDIA GPU, PyTorch and transformers
# (the device machine of issue 9): build the binary elsewhere with benches/gpu/prepare.sh, then
# run this from the repository root (benches/gpu/session.sh runs the GPU tests first, then
# this). It measures, side by side:
#   1. the card's bf16 matrix-product rate (PyTorch, 8192^3): the ceiling for FLOP utilisation;
#   2. flora's training step of the paper's model (6 x 768, batch 84 x 256) in f32 and bf16, bf16 with
#      flash attention (`--attention flash`) beside the products (and in
#      bf16 at 195 tokens, real promoters grouped by length, beside PyTorch's at 195, with the
#      last layer at the masked positions and, as PyTorch runs it, at every position), and
#      where its time goes (`flora bench --profile`: profile-bf16.txt, profile-f32.txt,
#      profile-bf16-flash.txt);
#   3. PyTorch + transformers RobertaForMaskedLM, same config and batch, f32 and bf16 autocast;
#   4. small models on the CPU and the GPU (benches/gpu/small.sh): a pretraining's validation loss
#      (and, on the CPU, another seed's, for the seed-to-seed spread), fine-tuning in f32 and bf16,
#      and predictions and embeddings. The CPU's runs come from .gpu/reference, made by
#      prepare.sh where it built the binary, so the card's time goes to the card's runs.
# GPU_QUICK=1 leaves out PyTorch's eager attention, for a short device lease. Each run is stopped
# after GPU_RUN_SECONDS (default 150) and reported as failed, so that a hang cannot spend the
# lease. GPU memory is the
# peak of nvidia-smi's reading while each run lasts. Results: $OUT (or benches/out/gpu), one JSON
# line per run in results.jsonl, and a table at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${FLORA_BIN:-.gpu/flora}
[ -x "$bin" ] || { gunzip -c "$bin.gz" >"$bin" && chmod +x "$bin"; }
out=${OUT:-benches/out/gpu}
steps=${BENCH_STEPS:-20}
limit=${GPU_RUN_SECONDS:-150}
mkdir -p "$out"
res=$out/results.jsonl
: >"$res"

source benches/gpu/libraries.sh
if ldd "$bin" | grep "not found"; then
  echo "run.sh: $bin cannot find the libraries above" >&2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$out/gpu.txt"

# Runs "$@" while sampling GPU memory; appends the peak (MiB in use, minus the idle reading) to the
# JSON line the command prints.
memlog=$(mktemp)
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
measured() {
  local label=$1
  shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$memlog" &
  local sampler=$!
  local json
  json=$(timeout "$limit" "$@" 2>>"$out/stderr.log")
  local rc=$?
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  local peak
  peak=$(sort -n "$memlog" | tail -1)
  if [ $rc -ne 0 ] || [ -z "$json" ]; then
    echo "{\"label\": \"$label\", \"failed\": $rc}" | tee -a "$res"
    return
  fi
  python3 -c 'import json, sys
d = json.loads(sys.argv[1]); d["label"] = sys.argv[2]; d["gpu_mib"] = int(sys.argv[3]) - int(sys.argv[4])
print(json.dumps(d))' "$json" "$label" "${peak:-0}" "$idle" | tee -a "$res"
}

measured matmul python3 benches/torch_step.py --matmul
for p in f32 bf16; do
  measured "flora $p" "$bin" bench --gpu 0 --precision "$p" --batch 84 --len 256 --steps "$steps" --json
done
measured "flora bf16 no dropout" "$bin" bench --gpu 0 --precision bf16 --dropout 0 --batch 84 --len 256 --steps "$steps" --json
# Flash attention (`--attention flash`) against the products above, same card, same call.
measured "flora bf16, flash attention" "$bin" bench --gpu 0 --precision bf16 --attention flash --batch 84 --len 256 --steps "$steps" --json
# Where a step's time goes, region by region (CUDA events on the stream, read after each step).
for p in bf16 f32; do
  timeout "$limit" "$bin" bench --gpu 0 --precision "$p" --batch 84 --len 256 --steps 3 --profile 2>>"$out/stderr.log" |
    tee "$out/profile-$p.txt"
done
timeout "$limit" "$bin" bench --gpu 0 --precision bf16 --attention flash --batch 84 --len 256 --steps 3 --profile 2>>"$out/stderr.log" |
  tee "$out/profile-bf16-flash.txt"
for p in f32 bf16; do
  measured "torch $p sdpa" python3 benches/torch_step.py --precision "$p" --attn sdpa --steps "$steps"
done
# Real promoters grouped by length: 195 positions per sequence (1 kb A. thaliana promoters with
# the published 5,005-token tokenizer, README's Performance), the paper's pretraining as run.
measured "flora bf16, 195 tokens" "$bin" bench --gpu 0 --precision bf16 --batch 84 --len 195 --steps "$steps" --json
# The last layer at every position, as PyTorch runs it: what running it at the masked positions
# alone (pretraining's way, the rows above) saves on the card.
measured "flora bf16 every position, 195 tokens" "$bin" bench --gpu 0 --precision bf16 --every-position --batch 84 --len 195 --steps "$steps" --json
measured "flora bf16 flash, 195 tokens" "$bin" bench --gpu 0 --precision bf16 --attention flash --batch 84 --len 195 --steps "$steps" --json
measured "torch bf16 sdpa, 195 tokens" python3 benches/torch_step.py --precision bf16 --attn sdpa --len 195 --steps "$steps"
[ "${GPU_QUICK:-0}" = 1 ] || measured "torch bf16 eager" python3 benches/torch_step.py --precision bf16 --attn eager --steps "$steps"

# The same small models on the CPU and the GPU (benches/gpu/small.sh). prepare.sh made the CPU's
# runs where it built the binary (.gpu/reference), so that they cost no time on the card; without
# them, the CPU pretraining is run here, and fine-tuning and predictions are left out.
ref=${GPU_REFERENCE:-.gpu/reference}
if [ ! -f "$ref/results.jsonl" ]; then
  echo "run.sh: no CPU reference in $ref (benches/gpu/prepare.sh makes it); running the CPU's pretraining here" >&2
  ref=$(mktemp -d)/reference
  FLORA_BIN=$bin SMALL_LOG=$out/stderr.log bash benches/gpu/small.sh cpu "$ref" pretrain >/dev/null
fi
[ -f "$ref/commit" ] && echo "CPU reference made at commit $(cat "$ref/commit")" | tee -a "$out/gpu.txt"
SMALL_SECONDS=$limit FLORA_BIN=$bin SMALL_LOG=$out/stderr.log bash benches/gpu/small.sh gpu "$ref" "$res"

python3 benches/gpu/report.py "$res" | tee "$out/report.md"
echo "--- last lines of $out/stderr.log"
tail -n 25 "$out/stderr.log"
