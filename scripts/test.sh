#!/usr/bin/env bash
# Install (if needed) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
