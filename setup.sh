#!/usr/bin/env bash
# One-step set-up for a fresh Debian/Ubuntu machine (idempotent): Fashion-MNIST, a venv, a constrained install.
# torch is pinned through constraints.txt so pip never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -z "${ZSQBENCH_DATA_ROOT:-}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
# Headless Chromium for the leaderboard site's browser test (tests/test_site.py); that test skips, saying why, where
# it cannot be installed.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; } ||
    echo "setup.sh: could not install chromium; the browser test (tests/test_site.py) will be skipped" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,ray,export]"  # ray: the Ray backend's tests; export: onnx/onnxruntime
