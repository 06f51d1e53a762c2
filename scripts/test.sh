#!/usr/bin/env bash
# The whole test suite: lint, then pytest over Testing/. Creates or reuses .venv by itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
ruff check .
bash "$ROOT/scripts/browser.sh"
python -m pytest Testing "$@"
