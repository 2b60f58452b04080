#!/usr/bin/env bash
# Debian's chromium for the real-browser UI test (iimed_assets_tests/test_ui_browser.py). Playwright
# drives it through `executable_path`, so no browser download from Playwright's CDN is needed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${IIMED_CHROMIUM:-}" ]; then
  echo "browser: $(command -v chromium || echo "$IIMED_CHROMIUM")"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
echo "browser: $(chromium --version)"
