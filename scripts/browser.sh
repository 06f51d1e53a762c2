#!/usr/bin/env bash
# Debian's chromium for the browser tests (Testing/test_web.py drives it with Playwright): installed with apt
# when /usr/bin/chromium is missing (needs root or sudo). Playwright's own browser download is not used.
set -euo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
