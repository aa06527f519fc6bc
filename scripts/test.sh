#!/usr/bin/env bash
# Run the tests with the Python that `bash scripts/setup.sh test` installed voicechat into: its own
# .venv on an operating system's Python (PEP 668), else the Python it found (a pyenv, venv or conda
# Python). setup.sh writes that interpreter's path to .voicechat-python; a fresh shell need not
# activate anything. Arguments go to pytest: bash scripts/test.sh tests/test_cli.py -x -q
set -euo pipefail
record="$(dirname "${BASH_SOURCE[0]}")/../.voicechat-python"
if [ ! -s "$record" ]; then
  echo "test: voicechat is not set up in this clone yet: run bash scripts/setup.sh test" >&2
  exit 2
fi
python="$(cat "$record")"
if ! "$python" -c 'import pytest' 2>/dev/null; then
  echo "test: $python (from .voicechat-python) has no pytest: run bash scripts/setup.sh test" >&2
  exit 2
fi
# That environment's programs (voicechat, python3) first, as if it were activated.
PATH="$(dirname "$python"):$PATH" exec "$python" -m pytest "$@"
