#!/bin/bash
# One device call for the kernels: GPU tests, the WeightPool torture test and the kernel benchmarks, with their
# logs under $OUT in the layout of benchmarks/results/kernels-KIND/ (commit that folder afterwards).
# Usage (through the device tool, from the repository root): bash benchmarks/kernels_device_run.sh KIND
# Needs only torch and triton (the GPU image has both); nothing here imports the simulator.
set -u
source "$(dirname "$0")/../validate/gpu/checkout_env.sh"
export PYTHONUNBUFFERED=1 DEVICE_KIND=$1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # multicast stays off
out=${OUT:-/tmp/kernels-out}
mkdir -p "$out"
nvidia-smi topo -m >"$out/nvidia-smi.txt" 2>&1
python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_kernels_*.py tests/test_weightpool_*.py \
  >"$out/pytest.log" 2>&1
echo "pytest rc=$?" >>"$out/pytest.log"
tail -3 "$out/pytest.log"
# Single-slot readers need the writer to pause now and then (a back-to-back writer starves a seqlock's
# readers): pauses of 0/100/200 us in turn. A second, short round without pauses shows the starvation.
python3 -m fabricsim.kernels.weightpool_torture --readers 2 --reads 10000 --gap-us 100 --max-seconds 120 \
  --out "$out/torture.json" >"$out/torture.log" 2>&1
echo "torture rc=$?" >>"$out/torture.log"
python3 -m fabricsim.kernels.weightpool_torture --mode single --readers 2 --reads 2000 --gap-us 0 --max-seconds 20 \
  --control-reads 0 --out "$out/torture-single-nogap.json" >>"$out/torture.log" 2>&1
echo "torture (single, no pauses) rc=$?" >>"$out/torture.log"
tail -3 "$out/torture.log"
python3 benchmarks/kernels.py --out "$out" --kind "$1" --budget-s "${2:-170}" >"$out/bench.log" 2>&1
echo "bench rc=$?" >>"$out/bench.log"
tail -3 "$out/bench.log"
