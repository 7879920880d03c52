#!/usr/bin/env bash
# Install lavapipe (Mesa's CPU Vulkan driver) from Debian bookworm-backports, so WebGPU (Dawn, through
# the `webgpu` package) has an adapter on a machine without a GPU. Needs root; does nothing if present.
set -euo pipefail
if [ -f /usr/share/vulkan/icd.d/lvp_icd.json ]; then exit 0; fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
    $sudo tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
test -f /usr/share/vulkan/icd.d/lvp_icd.json
