#!/usr/bin/env bash
# Install (if needed) and run the demo on embedded phantom data: no download, CPU is enough.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ctmri demo "$@"
