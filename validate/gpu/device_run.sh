#!/bin/bash
# One device call: the full validate suite on a lent GPU machine, packed under $OUT (few files, as the
# device tool returns at most 8). Usage: bash validate/gpu/device_run.sh KIND [BUDGET_S]
set -u
source "$(dirname "$0")/checkout_env.sh"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=32
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
kind=$1
budget=${2:-400}
out=${OUT:-/tmp/validate-out}
mkdir -p "$out"
nvidia-smi topo -m >"$out/topo_m.txt" 2>&1
python3 -m fabricsim.validate validate --suite full --out "/tmp/v-$kind" --kind "$kind" --budget-s "$budget" 2>&1 \
  | tee "$out/log.txt"
if [ -d "/tmp/v-$kind" ]; then
  tar czf "$out/validate-$kind.tgz" -C /tmp "v-$kind"
  cp "/tmp/v-$kind/measured.json" "$out/measured-$kind.json"
fi
