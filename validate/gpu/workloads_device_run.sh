#!/bin/bash
# One device call for issue 14: the copy suite (the one-GPU profile: base rates, IPC open/close), then the
# workload suite, packed under $OUT (the device tool returns at most 8 files).
# Usage: bash validate/gpu/workloads_device_run.sh KIND [WORKLOAD_BUDGET_S] [COPY_BUDGET_S]
set -u
source "$(dirname "$0")/checkout_env.sh"
export PYTHONUNBUFFERED=1 CUDA_DEVICE_MAX_CONNECTIONS=32
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
kind=$1
budget=${2:-300}
copy_budget=${3:-100}
out=${OUT:-/tmp/workloads-out}
mkdir -p "$out"
root=$(pwd)
# Python puts the working directory first on sys.path; the checkout's root holds a bare `fabricsim/` folder
# that would hide the namespace checkout_env.sh builds, so run Python from elsewhere.
cd /tmp
{ nvidia-smi; nvidia-smi topo -m; df -h /dev/shm; free -g; git -C "$root" log -1 --format=%H 2>/dev/null; } >"$out/facts.txt" 2>&1
if [ "$copy_budget" != "0" ]; then
  timeout $((copy_budget + 120)) python3 -m fabricsim.validate validate --suite full --out "/tmp/v-$kind" \
    --kind "$kind" --budget-s "$copy_budget" >"$out/log-copies.txt" 2>&1
  [ -d "/tmp/v-$kind" ] && tar czf "$out/validate-$kind.tgz" -C /tmp "v-$kind"
fi
only=()
for o in ${ONLY:-}; do only+=(--only "$o"); done
timeout $((budget + 150)) python3 -m fabricsim.validate validate --suite workloads --out "/tmp/w-$kind" \
  --kind "$kind" --budget-s "$budget" "${only[@]}" 2>&1 | tee "$out/log-workloads.txt"
[ -f "/tmp/w-$kind/workloads.json" ] && cp "/tmp/w-$kind/workloads.json" "$out/workloads-$kind.json"
if [ "${WITH_POOL_TESTS:-1}" = "1" ]; then
  # the pool's and the relay's GPU tests, then relay torture runs (chains of 2 and 3 hops on this GPU)
  # (from /tmp: the checkout's bare fabricsim/ folder must not shadow the namespace)
  timeout 300 python3 -m pytest -q --noconftest -p no:cacheprovider --rootdir "$root" "$root/tests/test_relay_gpu.py" \
    "$root/tests/test_weightpool_gpu.py" "$root/tests/test_relay.py" >"$out/log-tests.txt" 2>&1
  tail -3 "$out/log-tests.txt"
  for run in "2 0" "3 0" "2 2000" "3 2000"; do
    set -- $run
    f="$out/relay-torture-$1hops-gap$2.json"
    timeout 120 python3 -m fabricsim.kernels.relay_torture --hops "$1" --seconds 8 --mib 64 --chunk-mib 8 \
      --gap-us "$2" --out "$f" >/dev/null 2>>"$out/log-tests.txt"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], 'torn', \
      d['torn_total'], {k: (v['pulls'], v['torn'], v['restarts']) for k, v in d.items() \
      if k.startswith('hop') and isinstance(v, dict)})" "$f"
  done
fi
tail -3 "$out/log-copies.txt" 2>/dev/null
