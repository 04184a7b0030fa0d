#!/usr/bin/env bash
# Every benchmark in one run, on CUDA when there is a GPU, else on the CPU: a measured matmul ceiling, training
# (engine vs plain fp32 loop), conversion (end to end vs forward), FID at the paper's test size (744 images per
# set), the peak memory of converting one 512 x 512 x 400 int16 CT, and (where Orthanc is installed) the DICOM
# node against `ctmri convert` on the same series. Tables to stdout; JSON and logs to OUT.
#   bash scripts/bench_all.sh [OUT]        (default OUT: bench_results/; PYTHON overrides the interpreter)
#   BENCH_QUICK=1 bash scripts/bench_all.sh OUT   tiny sizes: seconds, for the tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-bench_results}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
quick=()
peak=()
large=(--n 1 --shape 512 512 400)
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then
    quick=(--quick)
    peak=(--size 256 --repeats 2)
    large=(--n 2 --shape 40 40 8 --image-size 64)
    node=(--series 2 --slices 4 --size 32)
else
    node=(--series 16 --slices 16 --size 64)
fi
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    convert_args=()              # CUDA defaults: 256 slices, batch 64, 5 passes
else
    convert_args=(--slices 16)   # a 2-core CPU takes about 1 s per ResNet-9 slice at 256 x 256
fi
run() {  # name, command...
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>"$OUT/$name.log" | tee "$OUT/$name.txt"
}
run bench_peak "$PY" scripts/bench_peak.py "${peak[@]}" --json "$OUT/bench_peak.json"
run bench_train "$PY" scripts/bench_train.py "${quick[@]}" --output "$OUT/bench_train.json"
run bench_convert "$PY" scripts/bench_convert.py "${quick[@]}" "${convert_args[@]}" --output "$OUT/bench_convert.json"
run bench_fid "$PY" scripts/bench_fid.py "${quick[@]}" --json "$OUT/bench_fid.json"
run large_volume env MALLOC_MMAP_THRESHOLD_=131072 "$PY" scripts/load_convert.py "${large[@]}" \
    --output-dir "$OUT/large_volume_work" --json "$OUT/large_volume.json"
rm -rf "$OUT/large_volume_work"
if [[ -x /usr/sbin/Orthanc ]]; then
    run bench_node env PYTHONPATH=. "$PY" scripts/bench_node.py "${node[@]}"
fi
