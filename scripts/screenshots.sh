#!/usr/bin/env bash
# The README's pictures (docs/web.png, docs/web-compare.png): a small CMSL model trained on phantoms (reused when
# screenshots-work/ holds it), a phantom case, the web page in Debian's chromium. Creates or reuses .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
bash "$ROOT/scripts/browser.sh"
cd "$ROOT"
python scripts/screenshots.py "$@"
