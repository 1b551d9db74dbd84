#!/usr/bin/env bash
# The small models that check flora's GPU path against its CPU path (issue 9: a run on the GPU
# reaches the validation loss of a run on the CPU): a pretraining (2 x 64, 4,000 simulated
# promoters, 2 epochs, 226 steps), fine-tuning that model on a 2-target table, and predictions and
# embeddings of 140 promoters.
#
#   small.sh cpu DIR [pretrain]   the corpus, the tokenizer and the CPU runs into DIR, their results
#                                 in DIR/results.jsonl; `pretrain` makes only the seed-0 pretraining.
#                                 prepare.sh runs it here, so that a device session spends no card
#                                 time on the CPU's side.
#   small.sh gpu DIR RESULTS      on the card: the same runs on GPU 0 from DIR's corpus, tokenizer and
#                                 CPU-pretrained model; appends DIR's CPU lines, then the GPU's, to
#                                 RESULTS (one JSON object a line, as run.sh's).
#
# FLORA_BIN is the binary (default: target/release/flora, or .gpu/flora on the card). Each flora
# command is stopped after SMALL_SECONDS (default 600), a failure like any other.
set -euo pipefail
cd "$(dirname "$0")/../.."
usage() {
  echo "usage: small.sh cpu DIR [pretrain] | small.sh gpu DIR RESULTS" >&2
  exit 2
}
[ $# -ge 2 ] || usage
mode=$1
dir=$2
case $mode in
cpu) bin=${FLORA_BIN:-target/release/flora} ;;
gpu) bin=${FLORA_BIN:-.gpu/flora} ;;
*) usage ;;
esac
[ -x "$bin" ] || { echo "small.sh: no flora binary at $bin" >&2; exit 1; }
log=${SMALL_LOG:-/dev/stderr}
limit=${SMALL_SECONDS:-600}

small=(--set layers=2 --set hidden=64 --set heads=2 --set intermediate=128 --set max_len=128
  --set epochs=2 --set batch_size=32 --set lr=0.002 --set warmup_steps=20 --set validation=0.1)
tune=(--set epochs=3 --set batch_size=32 --set lr=0.002 --set patience=0)

# Prints the JSON line of a run that failed, on the card; on the CPU a failure ends the script.
failed() {
  [ "$mode" = gpu ] || { echo "small.sh: $1 failed (exit status $2); see $log" >&2; exit 1; }
  echo "{\"label\": \"$1\", \"what\": \"small\", \"failed\": $2, \"where\": \"$where\"}"
}

# Runs "$@" (a flora command whose output folder is $out) and prints its JSON line: the label,
# the wall seconds, where it ran and the fields of its summary.json that `fields` picks.
timed() {
  local label=$1 out=$2 fields=$3
  shift 3
  local start end rc=0
  start=$(date +%s.%N)
  timeout "$limit" "$@" >/dev/null 2>>"$log" || rc=$?
  end=$(date +%s.%N)
  [ $rc -eq 0 ] || { failed "$label" $rc; return 0; }
  python3 -c 'import json, os, sys
label, out, fields, start, end, where = sys.argv[1:]
s = json.load(open(os.path.join(out, "summary.json")))
if fields == "pretrain":
    picked = s
else:
    picked = {"steps": s["steps"], "best_val_loss": s["best_val_loss"],
              "test_pearson_r2": s["test_all"]["pearson_r2"], "test_r2": s["test_all"]["r2"]}
print(json.dumps({"label": label, "seconds": float(end) - float(start), "where": where, **picked}))' \
    "$label" "$out" "$fields" "$start" "$end" "$where"
}

pretrain() { # SEED: pretrain-MODE-SEED from DIR's corpus and tokenizer
  local out=$keep/pretrain-$mode-$1
  FLORA_CACHE=$work/cache-$mode-$1 timed "pretrain $mode seed $1" "$out" pretrain \
    "$bin" stage pretrain --input corpus="$dir/corpus.fa" --input tokenizer="$dir/bpe" \
    "${small[@]}" --set seed="$1" "${gpus[@]}" --out "$out"
}

finetune() { # PRECISION: fine-tuning DIR's CPU-pretrained model on DIR's table
  local out=$keep/ft-$mode-$1
  FLORA_CACHE=$work/cache-ft-$mode-$1 timed "finetune $mode $1" "$out" finetune \
    "$bin" stage finetune --input model="$dir/pretrain-cpu-0" --input table="$dir/table.tsv" \
    "${tune[@]}" --set precision="$1" "${gpus[@]}" --out "$out"
}

# The largest difference between two TSVs of an id column and numbers, as a JSON line.
compare() {
  python3 -c 'import json, sys
rows = [[list(map(float, l.split("\t")[1:])) for l in open(f).read().splitlines()[1:] if not l.startswith("#")] for f in sys.argv[2:4]]
a, b = rows
diff = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) if a and len(a) == len(b) else float("nan")
scale = max(abs(x) for r in a for x in r) if a else float("nan")
print(json.dumps({"label": sys.argv[1], "sequences": len(a), "max_abs_diff": diff, "max_abs_value": scale}))' "$@"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The CPU's runs are kept in DIR as the reference; the card's go to scratch.
gpus=()
keep=$dir
[ "$mode" = gpu ] && { gpus=(--gpus 0); keep=$work; }

if [ "$mode" = cpu ]; then
  where="CPU, $(nproc) cores, $(hostname)"
  rm -rf "$dir"
  mkdir -p "$dir"
  FLORA_CACHE=$work/cache "$bin" run workflows/demo.yaml --until 'promoters[B73]' --set vars.families=3500 \
    --results "$work/results" >/dev/null 2>>"$log"
  gunzip -c "$work/results/promoters/B73/promoters.fa.gz" >"$dir/corpus.fa"
  FLORA_CACHE=$work/cache "$bin" stage bpe --input corpus="$dir/corpus.fa" --set vocab_size=400 \
    --set max_len=128 --out "$dir/bpe" >/dev/null 2>>"$log"
  # A table whose targets follow the sequences (GC content, TATA boxes), and 140 promoters.
  awk 'function emit() { if (id == "") return; gc = gsub(/[GC]/, "&", seq); t = gsub(/TATA/, "&", seq)
         printf "%s\t%s\t%.4f\t%.4f\n", id, seq, gc / 100, t + 1 }
       BEGIN { print "id\tsequence\tleaf\troot" }
       /^>/ { emit(); id = substr($1, 2); seq = ""; next } { seq = seq $0 } END { emit() }' \
    "$dir/corpus.fa" >"$dir/table.tsv"
  awk '/^>/ { n++ } n <= 140' "$dir/corpus.fa" >"$dir/few.fa"
  {
    pretrain 0
    if [ "${3:-}" != pretrain ]; then
      pretrain 1
      finetune f32
      "$bin" predict --model "$dir/ft-cpu-f32" --fasta "$dir/few.fa" -o "$dir/pred-cpu.tsv" 2>>"$log"
      "$bin" embed --model "$dir/pretrain-cpu-0" --fasta "$dir/few.fa" -o "$dir/emb-cpu.tsv" 2>>"$log"
    fi
  } >"$dir/results.jsonl"
  git rev-parse HEAD >"$dir/commit" 2>/dev/null || true
  cat "$dir/results.jsonl"
  exit 0
fi

[ $# -eq 3 ] || usage
res=$3
[ -f "$dir/results.jsonl" ] || { echo "small.sh: $dir holds no CPU runs (small.sh cpu $dir first)" >&2; exit 1; }
where="GPU 0, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
{
  cat "$dir/results.jsonl"
  pretrain 0
  if [ -d "$dir/ft-cpu-f32" ]; then
    finetune f32
    finetune bf16
    if timeout "$limit" "$bin" embed --model "$dir/pretrain-cpu-0" --fasta "$dir/few.fa" -o "$work/emb-gpu.tsv" --gpu 0 2>>"$log"; then
      compare "embed cpu vs gpu" "$dir/emb-cpu.tsv" "$work/emb-gpu.tsv"
    else
      failed "embed cpu vs gpu" $?
    fi
    if timeout "$limit" "$bin" predict --model "$dir/ft-cpu-f32" --fasta "$dir/few.fa" -o "$work/pred-gpu.tsv" --gpu 0 2>>"$log"; then
      compare "predict cpu vs gpu" "$dir/pred-cpu.tsv" "$work/pred-gpu.tsv"
    else
      failed "predict cpu vs gpu" $?
    fi
  fi
} | tee -a "$res"
