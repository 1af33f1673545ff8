#!/usr/bin/env bash
# Installs the Debian 12 packages spade needs (as root, or through sudo).
# SPADE_WITH_TORCH=1 also installs python3-torch and python3-torchvision, which
# enable the PyTorch cross-check test and the side-by-side benchmark script.
set -euo pipefail
pkgs=(g++ cmake make libeigen3-dev catch2 libbenchmark-dev nlohmann-json3-dev)
if [ "${SPADE_WITH_TORCH:-0}" = 1 ]; then pkgs+=(python3 python3-torch python3-torchvision); fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
