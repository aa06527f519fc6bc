"""The installed llama.cpp is the portable build from scripts/setup.sh, not one for this CPU.

A build for the build host's CPU (-march=native) uses whatever that CPU has: on an AVX-512 or
AMX machine it then dies with SIGILL elsewhere. The x86-64 baseline is x86-64-v3 (AVX2, FMA,
F16C), so the libraries must hold no AVX-512 (zmm registers) and no AMX (tile) instruction.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

BEYOND_V3 = re.compile(r"%zmm\d|%k[1-7]\b|\btile(loadd|stored|zero|release)|\btdp(bf16|b[su][su])d")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_llama_cpp_reports_the_x86_64_v3_baseline() -> None:
    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX2 = 1" in info and "FMA = 1" in info and "F16C = 1" in info, info
    assert "AVX512" not in info and "AMX" not in info, info


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_llama_cpp_libraries_hold_no_instruction_beyond_x86_64_v3() -> None:
    libraries = sorted(Path(llama_cpp.__file__).parent.glob("lib/libggml*.so"))
    assert libraries, "no ggml library found next to llama_cpp"
    for library in libraries:
        listing = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", str(library)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = BEYOND_V3.search(listing)
        assert found is None, f"{library.name} uses {found.group(0)}: a CPU-specific build"
