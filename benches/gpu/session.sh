#!/usr/bin/env bash
# One device session's checks, in one call on the machine with the GPU (after
# benches/gpu/prepare.sh, with .gpu carried): the stage crate's `gpu_` tests (every CUDA kernel and
# a whole training step against the CPU), then `run.sh`'s measurements, quick unless GPU_QUICK=0.
# Everything goes under $OUT (or benches/out/gpu): gpu-tests.txt, then what run.sh writes.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-benches/out/gpu}
mkdir -p "$out"
source benches/gpu/libraries.sh
for b in flora stage-tests; do
  [ -x ".gpu/$b" ] || { gunzip -c ".gpu/$b.gz" >".gpu/$b" && chmod +x ".gpu/$b"; }
done
# The kernels' tests first: a wrong kernel makes the timings below meaningless. Flash attention's
# (not yet run on a card when written) each get a process of their own, the tensor cores'
# conventions first: a kernel that faults leaves its process's CUDA context unusable, and would
# fail every test after it.
timeout "${GPU_TESTS_SECONDS:-180}" .gpu/stage-tests gpu_ --skip flash --skip tensor_core \
  --test-threads 1 2>&1 | tee "$out/gpu-tests.txt"
echo "gpu_ tests exit status: ${PIPESTATUS[0]}" | tee -a "$out/gpu-tests.txt"
for t in gpu_tensor_core_fragments_follow_ptx_layouts gpu_flash_attention_matches_the_cpu \
  gpu_training_step_with_flash_attention_matches_the_cpu; do
  timeout 60 .gpu/stage-tests "$t" --test-threads 1 2>&1 | tee -a "$out/gpu-tests.txt"
  echo "$t exit status: ${PIPESTATUS[0]}" | tee -a "$out/gpu-tests.txt"
done
GPU_QUICK=${GPU_QUICK:-1} OUT=$out bash benches/gpu/run.sh
