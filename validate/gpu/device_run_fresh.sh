#!/bin/bash
# One device call on a fresh machine (issue 15): the full validate suite, the quick suite (timed: it must stay
# under 60 s) and the full suite again (a second run of the same machine, for run-to-run spread), packed
# under $OUT (few files: the device tool returns at most 8). Usage: bash validate/gpu/device_run_fresh.sh KIND
set -u
source "$(dirname "$0")/checkout_env.sh"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=32
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
kind=$1
out=${OUT:-/tmp/validate-out}
mkdir -p "$out" /tmp/vf
nvidia-smi topo -m >"$out/topo_m.txt" 2>&1
for run in full quick full2; do
  suite=${run%2}
  start=$(date +%s%N)
  # from /tmp: in the checkout, python -m would find the bare fabricsim/ folder first
  (cd /tmp && python3 -m fabricsim.validate validate --suite "$suite" --out "/tmp/vf/$kind-$run" --kind "$kind" --budget-s 240 \
    >"$out/log-$run.txt" 2>&1)
  rc=$?; echo "$run: exit $rc, $(( ($(date +%s%N) - start) / 1000000 )) ms wall (process start to end)" | tee -a "$out/log-$run.txt"
  [ -f "/tmp/vf/$kind-$run/measured.json" ] && cp "/tmp/vf/$kind-$run/measured.json" "$out/measured-$run.json"
done
tar czf "$out/validate-$kind.tgz" -C /tmp/vf .
