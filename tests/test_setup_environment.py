"""Where scripts/setup.sh installs voicechat, and how a fresh shell finds it afterwards.

The decision (setup.sh's choose_environment and find_python) is asked of real Pythons: an
operating system's Python is reproduced by a Python installation of its own in a temporary folder
(a copy of this interpreter's binary, its standard library linked in, site-packages of its own),
which the test marks externally managed as Debian does (PEP 668); pip itself refuses it, which
the tests check too, so the reproduction is the real thing. A virtual environment made from it,
and the same installation without the marker, are the other two cases. The launcher and
scripts/test.sh run for real, in temporary folders. Nothing here installs anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .test_setup_script import SETUP_SH, run

ROOT = SETUP_SH.parents[1]
TEST_SH = ROOT / "scripts" / "test.sh"
VERSION = "{}.{}".format(*sys.version_info[:2])
FIELDS = ("kind", "version", "executable", "why")


def python_installation(root: Path, *, externally_managed: bool) -> Path:
    """A Python installation at `root` that is not a virtual environment (sys.prefix is root),
    made in milliseconds: this interpreter's binary copied to root/bin (a copy, not a link:
    Python finds its prefix from where its binary lies), its standard library linked file by
    file into root/lib/pythonX.Y, and an empty site-packages of its own. Returns its python3."""
    binary = Path(os.path.realpath(sys._base_executable))  # type: ignore[attr-defined]
    stdlib = Path(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix}))
    lib = root / "lib" / stdlib.name
    (lib / "site-packages").mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            (lib / entry.name).symlink_to(entry)
    if externally_managed:  # what Debian's libpython3.X-stdlib ships
        (lib / "EXTERNALLY-MANAGED").write_text(
            "[externally-managed]\nError=This Python belongs to the test's pretend OS.\n"
        )
    (root / "bin").mkdir()
    python = root / "bin" / "python3"
    python.write_bytes(binary.read_bytes())
    python.chmod(0o755)
    return python


def choose(tmp_path: Path, python: Path | str, minimum: str = "3.11", **env: str) -> dict[str, str]:
    result = run(tmp_path, f'choose_environment "{python}" {minimum}', **env)
    assert result.returncode == 0, result.stderr
    return dict(zip(FIELDS, result.stdout.rstrip("\n").split("\t"), strict=True))


def pip_refuses(python: Path, tmp_path: Path) -> bool:
    """Whether pip, run by `python`, refuses to install into it as externally managed. pip comes
    from this test's own environment (the installation has none); --dry-run --no-index: nothing
    is installed or downloaded whatever the answer."""
    import pip

    env = {**os.environ, "PYTHONPATH": str(Path(pip.__file__).parents[1])}
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--dry-run", "--no-index", "voicechat-nothing"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    return "externally-managed-environment" in result.stderr


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the variables that say an environment is active."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    return {**env, **extra}


@pytest.fixture
def managed(tmp_path: Path) -> Path:
    """An operating system's Python, as far as pip and setup can tell: externally managed."""
    return python_installation(tmp_path / "os-python", externally_managed=True)


# --- the decision -------------------------------------------------------------------------------


def test_an_externally_managed_python_gets_a_virtual_environment_of_its_own(
    tmp_path: Path, managed: Path
) -> None:
    assert pip_refuses(managed, tmp_path)  # the reproduction is PEP 668 as pip enforces it
    choice = choose(tmp_path, managed)
    marker = managed.parents[1] / "lib" / f"python{VERSION}" / "EXTERNALLY-MANAGED"
    assert choice == {
        "kind": "venv",
        "version": VERSION,
        "executable": str(managed),
        "why": f"it is externally managed (PEP 668: {marker})",
    }


def test_an_active_virtual_environment_is_installed_into_even_of_a_managed_python(
    tmp_path: Path, managed: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([str(managed), "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python3"
    assert not pip_refuses(python, tmp_path)  # pip ignores the marker in a venv (PEP 668)
    choice = choose(tmp_path, python)
    assert choice["kind"] == "here", choice
    assert choice["why"] == f"the active virtual environment {venv}"
    # Activated (its bin first on PATH), it is the python3 setup finds.
    result = run(tmp_path, "find_python 3.11", PATH=f"{venv / 'bin'}:/usr/bin:/bin")
    assert result.stdout.startswith(f"python3\there\t{VERSION}\t{python}\t"), result


def test_a_plain_python_that_is_not_externally_managed_is_installed_into(tmp_path: Path) -> None:
    python = python_installation(tmp_path / "own-python", externally_managed=False)
    assert not pip_refuses(python, tmp_path)
    choice = choose(tmp_path, python)
    assert choice["kind"] == "here", choice
    assert choice["why"] == f"{tmp_path / 'own-python'}, which is not externally managed"


def test_an_active_conda_environment_is_installed_into(tmp_path: Path, managed: Path) -> None:
    prefix = managed.parents[1]
    assert choose(tmp_path, managed, CONDA_PREFIX=str(prefix))["kind"] == "here"
    other = str(tmp_path / "another-conda-env")  # active, but not this Python's
    assert choose(tmp_path, managed, CONDA_PREFIX=other)["kind"] == "venv"


def test_a_python_older_than_the_minimum_is_too_old(tmp_path: Path) -> None:
    newer = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"
    choice = choose(tmp_path, sys.executable, minimum=newer)
    assert choice["kind"] == "too-old"
    assert choice["why"] == f"Python {VERSION} is older than {newer}"
    assert choose(tmp_path, sys.executable, minimum=VERSION)["kind"] != "too-old"


# --- a python3 that is too old ------------------------------------------------------------------


def older_python() -> Path | None:
    """A real Python 3 older than 3.11 on this machine (pyenv's, a distribution's), if any."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(pyenv.glob("3.*/bin/python3.*")) + sorted(Path("/usr/bin").glob("python3.*"))
    for path in found:
        match = re.fullmatch(r"python3\.(\d+)", path.name)
        if match and 6 <= int(match.group(1)) < 11 and os.access(path, os.X_OK):
            return path
    return None


OLDER = older_python()
needs_older = pytest.mark.skipif(OLDER is None, reason="no Python older than 3.11 on this machine")


def bin_dir(tmp_path: Path, **pythons: Path) -> Path:
    """A folder for PATH with the given Pythons (name -> interpreter) and the few programs
    setup.sh runs before it looks at the Python: no apt-get, no pip, nothing that installs."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("bash", "dirname", "grep", "sort"):
        (folder / name).symlink_to(subprocess.check_output(["which", name], text=True).strip())
    for name, python in pythons.items():
        (folder / name).symlink_to(python)
    return folder


@needs_older
def test_a_newer_python3_minor_on_path_takes_over_from_an_old_python3(tmp_path: Path) -> None:
    assert OLDER is not None
    current = Path(os.path.realpath(sys._base_executable))  # type: ignore[attr-defined]
    folder = bin_dir(tmp_path, python3=OLDER, **{f"python{VERSION}": current})
    result = run(tmp_path, "find_python 3.11", PATH=str(folder))
    command, kind, version, _executable, _why = result.stdout.rstrip("\n").split("\t")
    assert (command, version) == (f"python{VERSION}", VERSION), result
    assert kind != "too-old"


@needs_older
def test_with_only_an_old_python_setup_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    assert OLDER is not None
    folder = bin_dir(tmp_path, python3=OLDER)
    # The whole script, not sourced: it must stop at the Python, before any step.
    result = subprocess.run(
        ["/bin/bash", str(SETUP_SH)], capture_output=True, text=True, timeout=60,
        env=clean_env(PATH=str(folder), TMPDIR=str(tmp_path)), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    old = re.search(r"python3\.(\d+)", OLDER.name)
    assert line.startswith("setup: voicechat needs Python 3.11 or newer, and python3 here"), line
    assert f"is 3.{old.group(1) if old else '?'}:" in line
    assert "apt-get install python3.11 python3.11-venv" in line
    assert list(tmp_path.glob("voicechat-setup.*")) == []  # no step ran


# --- the launcher -------------------------------------------------------------------------------


def program(tmp_path: Path, name: str) -> Path:
    """A stand-in for .venv/bin/voicechat: says its name and arguments."""
    path = tmp_path / name / ".venv" / "bin" / "voicechat"
    path.parent.mkdir(parents=True)
    path.write_text(f'#!/bin/sh\necho "{name}: $*"\n')
    path.chmod(0o755)
    return path


def test_the_launcher_runs_the_program_with_its_arguments(tmp_path: Path) -> None:
    target = program(tmp_path, "clone with space")
    bin_folder = tmp_path / "local" / "bin"  # made when missing, as ~/.local/bin may be
    result = run(tmp_path, f'install_launcher "{bin_folder}" "{target}"')
    assert result.stdout == f"setup: launcher: {bin_folder}/voicechat runs {target}\n"
    ran = subprocess.run([bin_folder / "voicechat", "talk", "--say", "a b"], capture_output=True)
    assert ran.stdout == b"clone with space: talk --say a b\n"


def test_the_launcher_of_another_clone_is_replaced_and_setup_says_so(tmp_path: Path) -> None:
    first, second = program(tmp_path, "first"), program(tmp_path, "second")
    run(tmp_path, f'install_launcher "{tmp_path}" "{first}"')
    result = run(tmp_path, f'install_launcher "{tmp_path}" "{second}"')
    assert result.stdout == (
        f"setup: launcher: {tmp_path}/voicechat now runs {second} (it ran {first})\n"
    )
    ran = subprocess.run([tmp_path / "voicechat", "x"], capture_output=True)
    assert ran.stdout == b"second: x\n"


def test_a_voicechat_that_setup_did_not_write_is_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "voicechat"
    foreign.write_text("#!/bin/sh\necho somebody else's voicechat\n")
    target = program(tmp_path, "clone")
    result = run(tmp_path, f'install_launcher "{tmp_path}" "{target}"')
    assert result.stdout == (
        f"setup: {foreign} exists and is not setup's launcher: left alone; run {target} instead\n"
    )
    assert foreign.read_text() == "#!/bin/sh\necho somebody else's voicechat\n"


def test_a_launcher_whose_environment_is_gone_says_so(tmp_path: Path) -> None:
    target = program(tmp_path, "deleted")
    run(tmp_path, f'install_launcher "{tmp_path}" "{target}"')
    target.unlink()
    ran = subprocess.run([tmp_path / "voicechat"], capture_output=True, text=True)
    assert ran.returncode == 127
    assert ran.stderr == (
        f"voicechat: {target} is gone: run bash scripts/setup.sh again in its clone "
        f"(or delete {tmp_path}/voicechat)\n"
    )


# --- scripts/test.sh, and the README's commands ------------------------------------------------


def run_test_sh(tmp_path: Path, record: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """scripts/test.sh ARGS, copied into a clone of its own with `record` as the Python setup
    chose (.voicechat-python), so the real clone's record is never touched."""
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    (clone / "scripts" / "test.sh").write_bytes(TEST_SH.read_bytes())
    if record is not None:
        (clone / ".voicechat-python").write_text(record + "\n")
    return subprocess.run(
        ["bash", str(clone / "scripts" / "test.sh"), *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip


def test_the_test_script_runs_pytest_with_the_python_setup_chose(tmp_path: Path) -> None:
    # The Python setup chose: one that is not on PATH, which sees this environment's packages
    # (pytest) through a .pth file.
    chosen = python_installation(tmp_path / "chosen", externally_managed=False)
    # Its first site folder, as it says (Debian's Python has its own: local/lib/.../dist-packages)
    where = "import site; print(site.getsitepackages()[0])"
    site = Path(subprocess.check_output([chosen, "-c", where], text=True).strip())
    site.mkdir(parents=True, exist_ok=True)
    paths = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "this-environment.pth").write_text("\n".join(sorted(paths)) + "\n")
    (tmp_path / "test_which.py").write_text(
        "import shutil, sys\n"
        "def test_which():\n"
        "    print('RAN-BY', sys.executable, shutil.which('python3'))\n"
    )
    result = run_test_sh(
        tmp_path, str(chosen), "-q", "-s", "-p", "no:cacheprovider", "test_which.py"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"RAN-BY {chosen} {chosen}" in result.stdout  # and its bin comes first on PATH


def test_the_test_script_before_setup_says_to_run_it(tmp_path: Path, managed: Path) -> None:
    result = run_test_sh(tmp_path, None)
    assert result.returncode == 2
    assert result.stderr == (
        "test: voicechat is not set up in this clone yet: run bash scripts/setup.sh test\n"
    )
    result = run_test_sh(tmp_path / "2", str(managed))  # set up without the test tools
    assert result.returncode == 2
    assert result.stderr == (
        f"test: {managed} (from .voicechat-python) has no pytest: run bash scripts/setup.sh test\n"
    )


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    [command] = re.findall(r"^bash scripts/setup\.sh test && .+$", readme, re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci
    assert "bash scripts/setup.sh && voicechat talk" in readme.splitlines()
