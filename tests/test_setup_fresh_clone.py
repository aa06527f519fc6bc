"""The README's first command, whole, as a new user on this machine's own Python (PEP 668).

A copy of this clone's files and a fresh home directory, owned by the unprivileged user nobody;
a login shell with the system's default PATH (the operating system's /usr/bin/python3 is the
python3 it finds), `bash scripts/setup.sh`, then, in a new login shell, `voicechat` answers a
question. The system's Python must have nothing new afterwards. The llama.cpp wheel comes from
this machine's cache (the run of `bash scripts/setup.sh test` before the tests built it), so the
run costs the virtual environment and its packages (about two minutes), not the eight-minute
build. As a user, not as root, so nothing is written outside the temporary folder: the
launcher goes to ~/.local/bin, which that first shell's PATH does not have yet (setup says so)
and a new login shell's does (Debian's ~/.profile adds it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .process_guard import owned_tempdir, spawn_group, stop

ROOT = Path(__file__).resolve().parents[1]
OS_PYTHON = Path("/usr/bin/python3")
USER = "nobody"
SETUP_TIMEOUT_S = 1800  # a bound for a hang, far above the two minutes it takes
WHEELS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voicechat" / "wheels"
SYSTEM_PACKAGES = ("libportaudio2", "build-essential", "python3-venv")


def os_python_version() -> str | None:
    if not OS_PYTHON.exists():
        return None
    return subprocess.check_output(
        [OS_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], text=True
    ).strip()


def externally_managed() -> bool:
    stdlib = subprocess.check_output(
        [OS_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"], text=True
    ).strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").is_file()


def missing_packages() -> list[str]:
    def installed(package: str) -> bool:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
        )
        return "install ok installed" in result.stdout

    return [package for package in SYSTEM_PACKAGES if not installed(package)]


def why_not() -> str | None:
    """Why this machine cannot run the test (None: it can)."""
    if os.geteuid() != 0:
        return "needs root, to run setup as the user nobody"
    if shutil.which("dpkg-query") is None or os_python_version() is None:
        return "not a Debian/Ubuntu machine with /usr/bin/python3"
    if not externally_managed():
        return f"{OS_PYTHON} is not externally managed here (Debian 12+, Ubuntu 23.04+ are)"
    if missing := missing_packages():
        return (
            f"setup would install {' '.join(missing)} (root's job): run bash scripts/setup.sh test"
        )
    if not any(WHEELS.glob("llama-cpp-python-*/*.whl")):
        return f"no llama.cpp wheel in {WHEELS} (an 8-minute build): run bash scripts/setup.sh"
    return None


pytestmark = pytest.mark.skipif(why_not() is not None, reason=str(why_not()))


def os_python_state() -> dict[str, list[str]]:
    """What the system's Python has: the entries of each of its package folders."""
    folders = subprocess.check_output(
        [OS_PYTHON, "-c", "import site, sysconfig; print('\\n'.join(sorted(set("
         "site.getsitepackages() + [sysconfig.get_path(k) for k in ('purelib', 'platlib')]))))"],
        text=True,
    ).split()  # fmt: skip
    return {f: sorted(os.listdir(f)) if os.path.isdir(f) else [] for f in folders}


@pytest.fixture
def newcomer() -> Iterator[Path]:
    """A folder for nobody: `clone` (this clone's files, as they are now) and `home`
    (Debian's skeleton ~/.profile, and the llama.cpp wheel in ~/.cache as an earlier run of
    setup would have left it)."""
    with owned_tempdir("voicechat-fresh-clone-") as base:
        base.chmod(0o755)
        clone, home = base / "clone", base / "home"
        # What a clone would hold were the work in progress committed: nothing git ignores.
        listing = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        files = subprocess.check_output(listing, cwd=ROOT).split(b"\0")
        for name in filter(None, (f.decode() for f in files)):
            source = ROOT / name
            if source.is_file():
                (clone / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, clone / name)
        home.mkdir()
        if Path("/etc/skel/.profile").is_file():
            shutil.copy2("/etc/skel/.profile", home / ".profile")
        shutil.copytree(WHEELS, home / ".cache" / "voicechat" / "wheels")
        entry = pwd.getpwnam(USER)
        for folder in (clone, home):
            for path in [folder, *folder.rglob("*")]:
                os.lchown(path, entry.pw_uid, entry.pw_gid)
        yield base


def login_shell(base: Path, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`command` in a new login shell of nobody, in the clone, with nothing of this process's
    environment: the system's default PATH (/etc/profile), and ~/.local/bin once it exists."""
    env = {"HOME": str(base / "home"), "LANG": "C.UTF-8", "TMPDIR": str(base / "home")}
    process = spawn_group(
        ["/bin/bash", "-l", "-c", command], user=USER, env=env, cwd=base / "clone",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_the_readme_command_on_the_systems_own_python(newcomer: Path) -> None:
    before = os_python_state()
    clone, home = newcomer / "clone", newcomer / "home"
    version = os_python_version()

    setup = login_shell(newcomer, "bash scripts/setup.sh", SETUP_TIMEOUT_S)
    report = f"stdout:\n{setup.stdout}\nstderr:\n{setup.stderr}"
    assert setup.returncode == 0, report
    assert setup.stderr == "", report  # not even a warning
    lines = setup.stdout.splitlines()
    assert lines[0].startswith(
        f"setup: Python: {OS_PYTHON} ({version}): it is externally managed (PEP 668: "
    ), report
    assert lines[0].endswith(
        f"so voicechat goes into a virtual environment of its own, {clone}/.venv"
    )
    assert not any("building llama.cpp" in line for line in lines), report  # the cached wheel
    launcher = home / ".local" / "bin" / "voicechat"
    assert f"setup: launcher: {launcher} runs {clone}/.venv/bin/voicechat" in lines, report
    assert any(
        line.startswith(f"setup: note: {home}/.local/bin is not on this shell's PATH")
        for line in lines
    ), report
    assert (clone / ".voicechat-python").read_text() == f"{clone}/.venv/bin/python3\n"

    # A new shell, as after logging in again: the part of the README command after the &&
    # (`ask` instead of the interactive `talk`: the same program and engines).
    ask = login_shell(
        newcomer,
        'command -v voicechat && voicechat ask --embedded "What is the capital of France?"',
        SETUP_TIMEOUT_S,
    )
    assert ask.returncode == 0, f"stdout:\n{ask.stdout}\nstderr:\n{ask.stderr}"
    found, *answer = ask.stdout.splitlines()
    assert found == str(launcher)
    assert "".join(answer).strip(), ask.stdout  # an answer, in words

    assert os_python_state() == before  # nothing new in the system's Python
    assert not (home / ".local" / "lib").exists()  # nor in nobody's user site
