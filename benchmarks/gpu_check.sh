#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) in one call on the device machine: installs the wheels carried
# in .whl/ (rasterio and its small dependencies, for the end-to-end step) into /tmp/site, puts the
# repository and /tmp/site on PYTHONPATH and runs the check; gpu_check.txt, gpu_check.json and
# gpu_check.log land in $OUT. Arguments go to the script, e.g. --mosaic 20480.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
if compgen -G "$repo/.whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$repo"/.whl/*.whl || echo "gpu_check.sh: the wheels did not install; step 3 needs rasterio" >&2
fi
export PYTHONPATH="$repo:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 "$repo/benchmarks/gpu_check.py" --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
