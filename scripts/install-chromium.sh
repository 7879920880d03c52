#!/usr/bin/env bash
# Install Debian's Chromium, which test/browser.test.ts drives headless (through playwright-core, no
# browser download) to run the library in a browser through navigator.gpu (SwiftShader, Chromium's own
# software WebGPU adapter). Needs root; does nothing if present.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium
