#!/usr/bin/env bash
# Install voicechat and everything it needs, from scratch, on a Debian/Ubuntu machine.
#   bash scripts/setup.sh        the program
#   bash scripts/setup.sh test   the program plus the test tools
# System packages come from apt (as root, or through sudo when available); Python packages from
# PyPI. Nothing is downloaded at run time afterwards.
#
# Which Python environment (choose_environment below): the one python3 belongs to (an active
# virtual environment or conda environment, a pyenv Python, any Python that is not the operating
# system's), unless that Python is externally managed (PEP 668: Debian 12+, Ubuntu 23.04+ mark
# theirs with an EXTERNALLY-MANAGED file), which pip must not touch: then a virtual environment of
# our own, .venv in this clone, made with that Python, and a `voicechat` launcher on PATH
# (/usr/local/bin as root, else ~/.local/bin). A python3 older than pyproject.toml's
# requires-python gives way to a newer python3.N on PATH, or setup says what to install and stops.
# The Python chosen is written to .voicechat-python, which scripts/test.sh runs the tests with.
#
# llama-cpp-python is compiled here, for a portable CPU baseline, never for this machine's CPU
# (see build_portable_llama below and docs/architecture.md, "A portable build").
#
# Each step prints one line; its own output goes to a log file (one per step, in a fresh
# ${TMPDIR:-/tmp}/voicechat-setup.XXXXXX folder). A step that runs long gets a heartbeat line with
# the elapsed time every 30 s (VOICECHAT_SETUP_HEARTBEAT_S), so the llama.cpp build, which takes
# minutes, does not look hung. With CI set (CI=true) there is no heartbeat. A step that fails
# prints the end of its log, the log's path, and ends the script with the step's exit code.
# Sourced with VOICECHAT_SETUP_LIB_ONLY=1, this file only defines its functions (for the tests).
set -euo pipefail

say() { echo "setup: $*"; }

# --- the step runner ---------------------------------------------------------------------------
setup_log_dir=""        # made by the first step
setup_step_count=0
setup_heartbeat_pid=""  # the running step's heartbeat, if any
setup_tty=""            # 1 when the heartbeat rewrites one terminal line (\r) instead of adding lines
setup_idle_fd=""        # a pipe nobody writes to: `read -t` on it waits without a child process

is_ci() { case "${CI:-}" in "" | 0 | false | False | FALSE) return 1 ;; *) return 0 ;; esac; }

# "2m30s", "45s"
format_elapsed() {  # VAR SECONDS
  if [ "$2" -ge 60 ]; then printf -v "$1" '%dm%02ds' $(($2 / 60)) $(($2 % 60)); else printf -v "$1" '%ds' "$2"; fi
}

# One line per interval, in the background, for as long as a step runs. Builtins only: the
# heartbeat never starts a process, so killing it leaves nothing behind (no sleep holding stdout).
heartbeat() {  # NAME INTERVAL
  local name=$1 interval=$2 started=$SECONDS parent=$$ elapsed line
  while :; do
    read -r -t "$interval" -u "$setup_idle_fd" _ || true
    kill -0 "$parent" 2>/dev/null || exit 0  # the script is gone (SIGKILL): so is its heartbeat
    format_elapsed elapsed $((SECONDS - started))
    line="setup:   still $name… $elapsed"
    if [ -n "$setup_tty" ]; then printf '\r%s\033[K' "$line"; else printf '%s\n' "$line"; fi
  done
}

start_heartbeat() {  # NAME
  local interval=${VOICECHAT_SETUP_HEARTBEAT_S:-30}
  # A positive number of seconds, or the default: 0 would print as fast as the shell can.
  [[ $interval =~ ^[0-9]*\.?[0-9]+$ && $interval =~ [1-9] ]] || interval=30
  if [ -z "$setup_idle_fd" ]; then
    mkfifo "$setup_log_dir/.idle"
    exec {setup_idle_fd}<>"$setup_log_dir/.idle"  # read-write: opening it does not wait for a writer
    rm "$setup_log_dir/.idle"
  fi
  setup_tty=""
  if [ -t 1 ] && [ "${TERM:-dumb}" != dumb ]; then setup_tty=1; fi
  heartbeat "$1" "$interval" &
  setup_heartbeat_pid=$!
}

stop_heartbeat() {
  if [ -n "$setup_heartbeat_pid" ]; then
    kill "$setup_heartbeat_pid" 2>/dev/null || true
    wait "$setup_heartbeat_pid" 2>/dev/null || true
    setup_heartbeat_pid=""
    if [ -n "$setup_tty" ]; then printf '\r\033[K'; fi  # wipe the progress line
  fi
}

# run_step "what: detail" COMMAND [ARG...]
# Says the description in one line, runs the command (a program or a function of this file, under
# set -e) with its output in a log file of its own, and on failure reports the end of that log and
# exits with the command's exit code. The part of the description before the first ": " names the
# step in the heartbeat and the failure report ("still building llama.cpp… 2m30s").
run_step() {
  local description=$1 name=${1%%: *} log rc
  shift
  if [ -z "$setup_log_dir" ]; then
    setup_log_dir="$(mktemp -d "${TMPDIR:-/tmp}/voicechat-setup.XXXXXX")"
  fi
  setup_step_count=$((setup_step_count + 1))
  printf -v log '%s/%02d-%s.log' "$setup_log_dir" "$setup_step_count" "${name//[^A-Za-z0-9.]/-}"
  say "$description"

  if ! is_ci; then start_heartbeat "$name"; fi
  # The heartbeat must not outlive the step, whether it ends, fails or is interrupted. (Set after
  # the heartbeat starts: a heartbeat stopped at once could otherwise run these traps itself.)
  trap 'stop_heartbeat' EXIT
  trap 'stop_heartbeat; say "interrupted: $name (its log so far: $log)" >&2; exit 130' INT
  trap 'stop_heartbeat; say "interrupted: $name (its log so far: $log)" >&2; exit 143' TERM
  trap 'stop_heartbeat; exit 129' HUP

  # set -e is ignored inside anything run as `cmd || ...`, so the step's exit code is taken with
  # set -e off around a subshell that turns it back on: a function step stops at its first error.
  # No input: a prompt nobody can see (the output goes to the log) fails instead of waiting forever.
  set +e
  (set -e; "$@") >"$log" 2>&1 </dev/null
  rc=$?
  set -e

  stop_heartbeat
  trap - EXIT INT TERM HUP
  if [ "$rc" -ne 0 ]; then
    {
      say "FAILED: $name (exit code $rc)"
      if [ -s "$log" ]; then
        say "the last lines of its log:"
        tail -n 25 "$log" | sed 's/^/    /'
      else
        say "(it printed nothing)"
      fi
      say "the whole log: $log"
    } >&2
    exit "$rc"
  fi
}

# --- which Python environment to install into -----------------------------------------------
# choose_environment PYTHON MINIMUM
# Asks PYTHON (a command) where voicechat should go, and prints one line of four tab-separated
# fields: KIND VERSION EXECUTABLE WHY. KIND is
#   here      install into this Python's environment (an active venv or conda environment, or a
#             Python that is not externally managed: pyenv, a source build, a container's Python)
#   venv      this Python is externally managed (PEP 668): make a virtual environment with it
#   too-old   older than MINIMUM ("3.11")
# The snippet avoids newer syntax (no f-strings), so an old Python 3 can still say how old it is.
choose_environment() {  # PYTHON MINIMUM
  "$1" - "$2" <<'PY'
import os, sys, sysconfig
minimum = tuple(int(part) for part in sys.argv[1].split("."))
version = "%d.%d" % sys.version_info[:2]
exe = os.path.abspath(sys.executable)
if sys.version_info[:len(minimum)] < minimum:
    kind, why = "too-old", "Python %s is older than %s" % (version, sys.argv[1])
elif sys.prefix != getattr(sys, "base_prefix", sys.prefix) or hasattr(sys, "real_prefix"):
    # A virtual environment: pip ignores any EXTERNALLY-MANAGED marker in one (PEP 668).
    kind, why = "here", "the active virtual environment %s" % sys.prefix
elif os.environ.get("CONDA_PREFIX") and os.path.realpath(os.environ["CONDA_PREFIX"]) == os.path.realpath(sys.prefix):
    kind, why = "here", "the active conda environment %s" % sys.prefix
else:
    marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
    if os.path.isfile(marker):
        kind, why = "venv", "it is externally managed (PEP 668: %s)" % marker
    else:
        kind, why = "here", "%s, which is not externally managed" % sys.prefix
print("\t".join((kind, version, exe, why)))
PY
}

# find_python MINIMUM: the command and its choose_environment line (COMMAND KIND VERSION
# EXECUTABLE WHY) for python3, or, when python3 is missing or older than MINIMUM, for the newest
# python3.N on PATH that is not; else the too-old line of python3 (nothing: no Python 3 here).
find_python() {  # MINIMUM
  local candidate line first=""
  local -a candidates=(python3)
  mapfile -t -O 1 candidates < <(compgen -c python3. | grep -xE 'python3\.[0-9]+' | sort -t. -k2,2nr -u)
  for candidate in "${candidates[@]}"; do
    line="$(choose_environment "$candidate" "$1" 2>/dev/null)" || continue
    line="$candidate"$'\t'"$line"
    [ -n "$first" ] || first=$line
    case "$line" in
      *$'\t'too-old$'\t'*) ;;
      *) printf '%s\n' "$line"; return 0 ;;
    esac
  done
  if [ -n "$first" ]; then printf '%s\n' "$first"; fi
}

# --- the launcher: `voicechat` on PATH for an install into our own .venv -----------------------
launcher_marker="# voicechat launcher, written by scripts/setup.sh"

# install_launcher DIR PROGRAM: writes DIR/voicechat, a launcher that runs PROGRAM, unless
# DIR/voicechat is something else than such a launcher: that one is left alone. Prints what it did.
install_launcher() {  # DIR PROGRAM
  local dir=$1 program=$2 path="$1/voicechat" previous=""
  if [ -e "$path" ] || [ -L "$path" ]; then
    if ! grep -qxF "$launcher_marker" "$path" 2>/dev/null; then
      say "$path exists and is not setup's launcher: left alone; run $program instead"
      return 0
    fi
    previous="$(sed -n 's/^# runs: //p' "$path")"
  fi
  mkdir -p "$dir"
  {
    echo '#!/bin/bash'
    echo "$launcher_marker"
    echo "# runs: $program"
    printf 'program=%q\n' "$program"
    # shellcheck disable=SC2016  # written for the launcher to expand, not here
    printf '%s\n' \
      'if [ ! -x "$program" ]; then' \
      '  echo "voicechat: $program is gone: run bash scripts/setup.sh again in its clone (or delete $0)" >&2' \
      '  exit 127' \
      'fi' \
      'exec "$program" "$@"'
  } >"$path.tmp"
  chmod 755 "$path.tmp"
  mv -f "$path.tmp" "$path"
  if [ -n "$previous" ] && [ "$previous" != "$program" ]; then
    say "launcher: $path now runs $program (it ran $previous)"
  else
    say "launcher: $path runs $program"
  fi
}

# Sourced by the tests: the functions above, nothing done. (`return` works only when sourced; run
# as a program with this variable set, the script stops rather than install anything.)
if [ "${VOICECHAT_SETUP_LIB_ONLY:-}" = 1 ]; then
  if (return 0 2>/dev/null); then return 0; fi
  say "VOICECHAT_SETUP_LIB_ONLY=1 is for sourcing this file; nothing done" >&2
  exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- the Python: checked first, so a Python that will not do stops setup before anything is installed
PYTHON_MINIMUM="$(grep -o 'requires-python = ">=[0-9.]*' pyproject.toml | grep -o '[0-9.]*$')"
IFS=$'\t' read -r python_command env_kind python_version found_python env_why \
  < <(find_python "$PYTHON_MINIMUM") || true
case "${env_kind:-}" in
  "")
    say "no Python 3 found (python3 on PATH): install Python $PYTHON_MINIMUM or newer (apt-get install python3 python3-venv) and run this again" >&2
    exit 1 ;;
  too-old)
    say "voicechat needs Python $PYTHON_MINIMUM or newer, and python3 here ($found_python) is $python_version: install a newer one (Ubuntu 22.04: apt-get install python$PYTHON_MINIMUM python$PYTHON_MINIMUM-venv) and run this again" >&2
    exit 1 ;;
esac
if [ "$env_kind" = venv ]; then
  venv_dir="$PWD/.venv"
  say "Python: $found_python ($python_version): $env_why, so voicechat goes into a virtual environment of its own, $venv_dir"
else
  say "Python: $found_python ($python_version), in $env_why"
fi

debian_packages=(
  libportaudio2     # PortAudio, which sounddevice plays audio through
  build-essential   # a C/C++ compiler and make: llama-cpp-python is compiled here
)
if [ "$env_kind" = venv ]; then
  # venv's pip comes from ensurepip, which Debian and Ubuntu ship apart, in python3.X-venv (with
  # the pip wheel it installs); python3-pip would only add pip to the system Python, unused here.
  debian_packages+=("python$python_version-venv")
fi
if [ "${1:-}" = "test" ]; then
  debian_packages+=(
    postgresql          # a real PostgreSQL server for the shared-memory test (started by the test)
    libasound2-plugins  # ALSA's "pulse" pcm, through which PortAudio reaches PulseAudio
    pulseaudio          # a private sound server with a null sink: real-time output without a card
    pulseaudio-utils    # parec: records that null sink, to hear what the browser client played
    chromium            # the web client's tests drive Debian's Chromium (no browser download)
    nodejs              # `node --test`: the web client's pure JavaScript, tested without a browser
    nginx               # the load balancer of docs/deployment.md, run by its test (not as a service)
    python3-venv        # the fresh-clone test installs into a venv of the system's Python, as a user would
  )
fi

install_debian_packages() {  # PACKAGE...
  "${sudo[@]}" apt-get update -qq
  # through env: sudo resets the environment, so a variable set in front of sudo never reaches apt
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    sudo=(false)
  fi
  missing=()
  for pkg in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "${sudo[*]}" = false ]; then
      say "not root and no sudo: install these first (apt-get install ${missing[*]}), then run this again" >&2
      exit 1
    fi
    if [ "${sudo[*]}" = sudo ] && ! sudo -n true 2>/dev/null; then
      # Ask for the password now, on the terminal, not under a step's progress line.
      sudo -v
    fi
    run_step "installing system packages: ${missing[*]}" install_debian_packages "${missing[@]}"
  else
    say "system packages: already installed: ${debian_packages[*]}"
  fi
else
  say "system packages: no apt-get here; make sure these are installed: ${debian_packages[*]}"
fi

# --- the environment voicechat goes into ----------------------------------------------------------
if [ "$env_kind" = venv ]; then
  python="$venv_dir/bin/python3"
  # One made earlier with this Python's version is used again; anything else there is replaced.
  if [ "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$python_version" ]; then
    run_step "making the virtual environment: $found_python -m venv --clear .venv" \
      "$found_python" -m venv --clear "$venv_dir"
  fi
else
  python=$python_command  # through PATH, as typed: pyenv's shim then updates its own shims
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
  if "$python" - "$wheel_dir" <<'PY' 2>/dev/null
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
    mkdir -p "$wheel_dir"
    run_step "building llama.cpp: from source for a portable CPU baseline ($arch), about 5-8 minutes on 2 cores, once" \
      env CMAKE_ARGS="$flags" FORCE_CMAKE=1 "$python" -m pip wheel --quiet --no-deps --no-cache-dir \
      --no-binary llama-cpp-python -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
    mv "$wheel_dir.tmp"/llama_cpp_python-*.whl "$wheel_dir"/ && rm -rf "$wheel_dir.tmp"
  fi
  run_step "installing llama-cpp-python $LLAMA_CPP_VERSION: the portable build from $wheel_dir" \
    "$python" -m pip install --quiet --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
  # its pure-Python dependencies, from PyPI as usual
  run_step "installing llama-cpp-python's dependencies: from PyPI" \
    "$python" -m pip install --quiet "llama-cpp-python==$LLAMA_CPP_VERSION"
}
build_portable_llama

if [ "${1:-}" = "test" ]; then
  run_step "installing Python packages: voicechat (editable) and its dependencies, with the test tools" \
    "$python" -m pip install --quiet -e ".[test]"
else
  run_step "installing Python packages: voicechat (editable) and its dependencies" \
    "$python" -m pip install --quiet -e .
fi
# for scripts/test.sh (untracked): the interpreter itself, not a command PATH could change
"$python" -c 'import sys; print(sys.executable)' >.voicechat-python

# openai-agents, the realtime client of tests/test_realtime_clients.py, in an environment of its
# own, as in a user's app: it requires websockets<17, and the server needs 17 (pyproject.toml).
# Made with the Python chosen above; one made earlier with the same version is used again.
if [ "${1:-}" = "test" ]; then
  agents_venv="$PWD/.venv-agents"
  make_agents_venv() {
    if [ "$("$agents_venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$python_version" ]; then
      "$python" -m venv --clear "$agents_venv"
    fi
    "$agents_venv/bin/python" -m pip install --quiet -r tests/agents-requirements.txt
  }
  run_step "making the openai-agents test client's environment: .venv-agents, from tests/agents-requirements.txt" \
    make_agents_venv
fi
run_step "checking the installed program: voicechat --help" "$python" -m voicechat --help
say "voicechat is installed (each step's output: $setup_log_dir)"

# The program, for a shell that never activates our .venv: a launcher on PATH.
if [ "$env_kind" = venv ]; then
  if [ "$(id -u)" = 0 ]; then bin_dir=/usr/local/bin; else bin_dir="$HOME/.local/bin"; fi
  install_launcher "$bin_dir" "$venv_dir/bin/voicechat"
  on_path="$(command -v voicechat || true)"
  if [ "$on_path" != "$bin_dir/voicechat" ]; then
    case ":$PATH:" in
      *":$bin_dir:"*) say "note: \`voicechat\` runs ${on_path}, found before $bin_dir on PATH; $venv_dir/bin/voicechat is this one" ;;
      *) say "note: $bin_dir is not on this shell's PATH (Debian's ~/.profile adds it at your next login, once it exists): until then, run $venv_dir/bin/voicechat" ;;
    esac
  fi
fi
if [ "${1:-}" = "test" ]; then
  say "next: bash scripts/test.sh    (the tests, with $python; voicechat doctor checks this machine)"
else
  say "next: voicechat talk    (voicechat doctor checks this machine if something does not work)"
fi
