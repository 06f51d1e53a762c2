#!/usr/bin/env bash
# What the browser tests (Testing/test_web.py) need from the system: Debian's chromium, driven by Playwright
# (its own browser download is not used), and EGL with Mesa for VTK's offscreen rendering. Each is installed
# with apt only when missing (needs root or sudo).
set -euo pipefail
PACKAGES=()
[ -x /usr/bin/chromium ] || PACKAGES+=(chromium)
ldconfig -p | grep -q 'libEGL.so.1 ' || PACKAGES+=(libegl1 libgl1-mesa-dri)
[ ${#PACKAGES[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}"
