# Sourced by the device scripts: makes `import fabricsim.<layer>` work straight from a checkout, without
# installing (the GPU machines have no package index). The layers sit at the repository root and install
# under one name through pyproject's package-dir; here a folder of symbolic links plays that mapping.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_ns=$(mktemp -d /tmp/fabricsim-ns.XXXXXX)
mkdir -p "$_ns/fabricsim"
for _f in "$_root"/fabricsim/*; do ln -s "$_f" "$_ns/fabricsim/"; done
for _d in hwmodels simcore workloads harness kernels validate studies; do ln -s "$_root/$_d" "$_ns/fabricsim/$_d"; done
export PYTHONPATH="$_ns${PYTHONPATH:+:$PYTHONPATH}"
# Python 3.11+: do not put the working directory first on sys.path (from the repository root, the bare
# `fabricsim/` folder there would hide the namespace above: "No module named fabricsim.validate").
export PYTHONSAFEPATH=1
