#!/usr/bin/env bash
# One device call: the GPU tests, then the capture-overhead and audit-throughput benchmarks,
# each log written to $OUT. Needs .whl/ carried (transformers, diskcache; ray for --ray).
#     bash bench/gpu_session.sh tests capture audit gptoss     # any subset, in this order
#     RAY="1 2" PROMPTS=2000 bash bench/gpu_session.sh ray
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for step in "$@"; do
  start=$(date +%s)
  case $step in
    tests) python3 -m pytest -q -p no:cacheprovider tests/test_deferred.py tests/test_fused_gpu.py \
             tests/test_batch.py tests/test_learned_sinks.py tests/test_invariants.py \
             tests/test_host_copy.py tests/test_multi_gpu.py -x -rs 2>&1 | tail -40 > "$OUT/tests.log" ;;
    capture) python3 bench/capture_overhead.py --profile > "$OUT/capture.log" 2>&1 ;;
    audit) python3 bench/audit_throughput.py --shape llama3-8b --prompts "${PROMPTS:-300}" --skip-batch1 \
             > "$OUT/audit.log" 2>&1 ;;
    gptoss) python3 bench/gpt_oss_capture.py > "$OUT/gptoss.log" 2>&1 ;;
    ray) python3 bench/audit_throughput.py --shape llama3-8b --prompts "${PROMPTS:-2000}" --skip-batch1 \
           --skip-local --ray ${RAY:-1 2} > "$OUT/ray.log" 2>&1 ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
  echo "== $step: $(( $(date +%s) - start )) s"; tail -25 "$OUT/$step.log"
done
