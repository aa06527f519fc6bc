#!/usr/bin/env bash
# Install voicechat and everything it needs, from scratch, on a Debian/Ubuntu machine.
#   bash scripts/setup.sh        the program
#   bash scripts/setup.sh test   the program plus the test tools
# System packages come from apt (as root, or through sudo when available); Python packages from
# PyPI into the current Python environment. Nothing is downloaded at run time afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(
  libportaudio2   # PortAudio, which sounddevice plays audio through
)
if [ "${1:-}" = "test" ]; then
  debian_packages+=(
    postgresql          # a real PostgreSQL server for the shared-memory test (started by the test)
    libasound2-plugins  # ALSA's "pulse" pcm, through which PortAudio reaches PulseAudio
    pulseaudio          # a private sound server with a null sink: real-time output without a card
  )
fi

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "setup: not root and no sudo; install these yourself: ${debian_packages[*]}" >&2
    sudo=(false)
  fi
  missing=()
  for pkg in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

if [ "${1:-}" = "test" ]; then
  python3 -m pip install --quiet -e ".[test]"
else
  python3 -m pip install --quiet -e .
fi
python3 -m voicechat --help >/dev/null
echo "setup: voicechat is installed"
