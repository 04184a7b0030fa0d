#!/usr/bin/env bash
# Create (or reuse) .venv and install ctmri-monai with the FID extra and the test tools.
# torch is pinned to 2.13.0 first so that nothing pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[fid,dev]"
python -c "import ctmri_monai, monai, torch; print('ctmri-monai', ctmri_monai.__version__, 'monai', monai.__version__, 'torch', torch.__version__)"
