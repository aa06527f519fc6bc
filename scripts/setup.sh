#!/usr/bin/env bash
# Install voicechat and everything it needs, from scratch, on a Debian/Ubuntu machine.
#   bash scripts/setup.sh        the program
#   bash scripts/setup.sh test   the program plus the test tools
# System packages come from apt (as root, or through sudo when available); Python packages from
# PyPI into the current Python environment. Nothing is downloaded at run time afterwards.
#
# llama-cpp-python is compiled here, for a portable CPU baseline, never for this machine's CPU
# (see build_portable_llama below and docs/architecture.md, "A portable build").
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*"; }

debian_packages=(
  libportaudio2     # PortAudio, which sounddevice plays audio through
  build-essential   # a C/C++ compiler and make: llama-cpp-python is compiled here
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
    say "not root and no sudo; install these yourself: ${debian_packages[*]}" >&2
    sudo=(false)
  fi
  missing=()
  for pkg in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "system packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# --- llama-cpp-python, built for a CPU baseline rather than for this machine ---------------------
# pip would compile llama.cpp with -march=native: the library then uses every instruction this CPU
# has (AVX-512, AMX, ...), and dies with SIGILL on a machine, or in a VM, that lacks one or whose
# kernel does not enable it. llama.cpp's run-time variant dispatch does not check what the OS
# enables either (ggml-cpu's x86 scorer: "FIXME: this does not check for OS support"), so we build
# one fixed baseline: x86-64-v3 (AVX2, FMA, F16C, BMI2: Intel Core since Haswell (2013), AMD
# since Excavator (2015); not some Atom-based Pentium/Celeron chips) on x86-64, armv8-a with NEON
# on arm64. The version is the one pyproject.toml pins. The wheel lands in a folder named after the version and the
# flags, so a wheel built with other flags (pip's own cache keys wheels by version only) is never
# reused; pip's cache is not read for this build at all.
LLAMA_CPP_VERSION="$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1 | cut -d= -f3)"
build_portable_llama() {
  local arch flags
  arch="$(uname -m)"
  case "$arch" in
    x86_64|amd64)
      flags="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON"
      flags+=" -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF"
      flags+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
    aarch64|arm64)
      flags="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_CPU_ARM_ARCH=armv8-a" ;;
    *)
      flags="-DGGML_NATIVE=OFF" ;;
  esac
  flags+=" -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
  local key wheel_dir
  key="$(printf '%s %s' "$LLAMA_CPP_VERSION" "$flags" | sha256sum | cut -c1-12)"
  wheel_dir="${XDG_CACHE_HOME:-$HOME/.cache}/voicechat/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$arch-$key"
  # Already installed from exactly this folder? Then there is nothing to do.
  if python3 - "$wheel_dir" <<'PY' 2>/dev/null
import importlib.metadata, json, sys, urllib.parse
dist = importlib.metadata.distribution("llama-cpp-python")
url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
sys.exit(0 if sys.argv[1] + "/" in urllib.parse.unquote(url) else 1)
PY
  then
    say "llama-cpp-python $LLAMA_CPP_VERSION: the portable build is installed"
    return
  fi
  if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "building llama.cpp from source for a portable CPU baseline ($arch): about 5-8 minutes on 2 cores, once"
    mkdir -p "$wheel_dir"
    CMAKE_ARGS="$flags" FORCE_CMAKE=1 python3 -m pip wheel --quiet --no-deps --no-cache-dir \
      --no-binary llama-cpp-python -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
    mv "$wheel_dir.tmp"/llama_cpp_python-*.whl "$wheel_dir"/ && rm -rf "$wheel_dir.tmp"
  fi
  python3 -m pip install --quiet --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
  # its pure-Python dependencies, from PyPI as usual
  python3 -m pip install --quiet "llama-cpp-python==$LLAMA_CPP_VERSION"
}
build_portable_llama

say "Python packages"
if [ "${1:-}" = "test" ]; then
  python3 -m pip install --quiet -e ".[test]"
else
  python3 -m pip install --quiet -e .
fi
python3 -m voicechat --help >/dev/null
say "voicechat is installed"
