"""The browser client's pure JavaScript (WAV, Base64, the resampler, the sample queue, where a
unit sits in an answer), tested by Node's own runner: `node --test tests/js/`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).parent / "js"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs)")
def test_the_javascript_unit_tests_pass() -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, "--test", str(TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert "# fail 0" in result.stdout
