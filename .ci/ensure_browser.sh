#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are present (Debian's chromium and chromium-driver) for
# tests/test_website.py, installing them when root. The browser comes from Debian, never from a download.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Installing Chromium for the website test (apt-get install chromium chromium-driver)..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >/dev/null
else
  echo "Chromium is missing: the website test (tests/test_website.py) drives it headless. Install it with" >&2
  echo "  sudo apt-get install chromium chromium-driver" >&2
  echo "(or run the other tests alone: .venv/bin/python -m pytest --ignore=tests/test_website.py)." >&2
  exit 1
fi
