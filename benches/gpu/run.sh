#!/usr/bin/env bash
# flora's GPU measurements, in one run on a machine with an NVIDIA GPU, PyTorch and transformers
# (the device machine of issue 9): build the binary elsewhere with benches/gpu/prepare.sh, then
# run this from the repository root (benches/gpu/session.sh runs the GPU tests first, then
# this). It measures, side by side:
#   1. the card's bf16 matrix-product rate (PyTorch, 8192^3): the ceiling for FLOP utilisation;
#   2. flora's training step of the paper's model (6 x 768, batch 84 x 256) in f32 and bf16 (and in
#      bf16 at 195 tokens, real promoters grouped by length, beside PyTorch's at 195), and
#      where its time goes (`flora bench --profile`: profile-bf16.txt, profile-f32.txt);
#   3. PyTorch + transformers RobertaForMaskedLM, same config and batch, f32 and bf16 autocast;
#   4. a small pretraining on simulated promoters on the CPU and on the GPU (and on the CPU with
#      another seed, for the seed-to-seed spread): their validation losses.
# With GPU_QUICK=1 it stops after step 4 (no fine-tuning, predictions, eager attention or second
# CPU seed), for a short device lease. GPU memory is the peak of nvidia-smi's reading while each
# run lasts. Results: $OUT (or
# benches/out/gpu), one JSON line per run in results.jsonl, and a table at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${FLORA_BIN:-.gpu/flora}
[ -x "$bin" ] || { gunzip -c "$bin.gz" >"$bin" && chmod +x "$bin"; }
out=${OUT:-benches/out/gpu}
steps=${BENCH_STEPS:-20}
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
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
measured() {
  local label=$1
  shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$out/mem.txt" &
  local sampler=$!
  local json
  json=$("$@" 2>>"$out/stderr.log")
  local rc=$?
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  local peak
  peak=$(sort -n "$out/mem.txt" | tail -1)
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
# Where a step's time goes, region by region (CUDA events on the stream, read after each step).
for p in bf16 f32; do
  "$bin" bench --gpu 0 --precision "$p" --batch 84 --len 256 --steps 3 --profile 2>>"$out/stderr.log" |
    tee "$out/profile-$p.txt"
done
for p in f32 bf16; do
  measured "torch $p sdpa" python3 benches/torch_step.py --precision "$p" --attn sdpa --steps "$steps"
done
# Real promoters grouped by length: 195 positions per sequence (1 kb A. thaliana promoters with
# the published 5,005-token tokenizer, README's Performance), the paper's pretraining as run.
measured "flora bf16, 195 tokens" "$bin" bench --gpu 0 --precision bf16 --batch 84 --len 195 --steps "$steps" --json
measured "torch bf16 sdpa, 195 tokens" python3 benches/torch_step.py --precision bf16 --attn sdpa --len 195 --steps "$steps"
[ "${GPU_QUICK:-0}" = 1 ] || measured "torch bf16 eager" python3 benches/torch_step.py --precision bf16 --attn eager --steps "$steps"

# The same small pretraining on the CPU and the GPU.
work=$(mktemp -d)
export FLORA_CACHE=$work/cache
"$bin" run workflows/demo.yaml --until 'promoters[B73]' --set vars.families=3500 --results "$work/results" >/dev/null 2>>"$out/stderr.log"
fa=$work/corpus.fa
gunzip -c "$work/results/promoters/B73/promoters.fa.gz" >"$fa"
"$bin" stage bpe --input corpus="$fa" --set vocab_size=400 --set max_len=128 --out "$work/bpe" >/dev/null 2>>"$out/stderr.log"
small=(--set layers=2 --set hidden=64 --set heads=2 --set intermediate=128 --set max_len=128
  --set epochs=2 --set batch_size=32 --set lr=0.002 --set warmup_steps=20 --set validation=0.1)
runs=("cpu 0" "gpu 0" "cpu 1")
[ "${GPU_QUICK:-0}" = 1 ] && runs=("cpu 0" "gpu 0")
for run in "${runs[@]}"; do
  set -- $run
  gpus=()
  [ "$1" = gpu ] && gpus=(--gpus 0)
  start=$(date +%s.%N)
  FLORA_CACHE=$work/cache-$1-$2 "$bin" stage pretrain --input corpus="$fa" --input tokenizer="$work/bpe" \
    "${small[@]}" --set seed="$2" "${gpus[@]}" --out "$work/pretrain-$1-$2" >/dev/null 2>>"$out/stderr.log"
  end=$(date +%s.%N)
  python3 -c 'import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
print(json.dumps({"label": "pretrain " + sys.argv[2] + " seed " + sys.argv[3], "seconds": float(sys.argv[5]) - float(sys.argv[4]), **s}))' \
    "$work/pretrain-$1-$2" "$1" "$2" "$start" "$end" | tee -a "$res"
done

finish() {
  python3 benches/gpu/report.py "$res" | tee "$out/report.md"
  echo "--- last lines of $out/stderr.log"
  tail -n 25 "$out/stderr.log"
  exit 0
}
[ "${GPU_QUICK:-0}" = 1 ] && finish

head -n 1960 "$fa" >"$work/few.fa"

# Fine-tuning on the CPU and the GPU (f32 and bf16) from the CPU-pretrained model, on a table
# whose targets follow the sequences (GC content, TATA boxes), then predictions on both devices.
awk 'function emit() { if (id == "") return; gc = gsub(/[GC]/, "&", seq); t = gsub(/TATA/, "&", seq)
       printf "%s\t%s\t%.4f\t%.4f\n", id, seq, gc / 100, t + 1 }
     BEGIN { print "id\tsequence\tleaf\troot" }
     /^>/ { emit(); id = substr($1, 2); seq = ""; next } { seq = seq $0 } END { emit() }' "$fa" >"$work/table.tsv"
tune=(--set epochs=3 --set batch_size=32 --set lr=0.002 --set patience=0)
for run in "cpu f32" "gpu f32" "gpu bf16"; do
  set -- $run
  gpus=()
  [ "$1" = gpu ] && gpus=(--gpus 0)
  start=$(date +%s.%N)
  FLORA_CACHE=$work/cache-ft-$1-$2 "$bin" stage finetune --input model="$work/pretrain-cpu-0" --input table="$work/table.tsv" \
    "${tune[@]}" --set precision="$2" "${gpus[@]}" --out "$work/ft-$1-$2" >/dev/null 2>>"$out/stderr.log"
  end=$(date +%s.%N)
  python3 -c 'import json, sys
s = json.load(open(sys.argv[1] + "/summary.json"))
print(json.dumps({"label": "finetune " + sys.argv[2], "seconds": float(sys.argv[4]) - float(sys.argv[3]), "steps": s["steps"],
                  "best_val_loss": s["best_val_loss"], "test_pearson_r2": s["test_all"]["pearson_r2"], "test_r2": s["test_all"]["r2"]}))' \
    "$work/ft-$1-$2" "$1 $2" "$start" "$end" | tee -a "$res"
done
"$bin" predict --model "$work/ft-cpu-f32" --fasta "$work/few.fa" -o "$work/pred-cpu.tsv" 2>>"$out/stderr.log"
"$bin" predict --model "$work/ft-cpu-f32" --fasta "$work/few.fa" -o "$work/pred-gpu.tsv" --gpu 0 2>>"$out/stderr.log"
# Inference on the GPU (issue 5's `--gpu`): embeddings of 140 promoters, CPU against GPU.
"$bin" embed --model "$work/pretrain-cpu-0" --fasta "$work/few.fa" -o "$work/emb-cpu.tsv" 2>>"$out/stderr.log"
"$bin" embed --model "$work/pretrain-cpu-0" --fasta "$work/few.fa" -o "$work/emb-gpu.tsv" --gpu 0 2>>"$out/stderr.log"
compare() {
  python3 -c 'import json, sys
rows = [[list(map(float, l.split("\t")[1:])) for l in open(f).read().splitlines()[1:] if not l.startswith("#")] for f in sys.argv[2:4]]
a, b = rows
diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) if a and len(a) == len(b) else float("nan")
scale = max(abs(x) for r in a for x in r) if a else float("nan")
print(json.dumps({"label": sys.argv[1], "sequences": len(a), "max_abs_diff": diff, "max_abs_value": scale}))' "$@" | tee -a "$res"
}
compare "embed cpu vs gpu" "$work/emb-cpu.tsv" "$work/emb-gpu.tsv"
compare "predict cpu vs gpu" "$work/pred-cpu.tsv" "$work/pred-gpu.tsv"
finish
