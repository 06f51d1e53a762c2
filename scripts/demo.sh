#!/usr/bin/env bash
# The demo: synthetic cohort -> preprocess -> fit CMSL and BCE -> evaluate, localize, compare, export.
# Creates or reuses .venv by itself; writes demo/report.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
breastcmsl-train demo --out "${1:-demo}"
