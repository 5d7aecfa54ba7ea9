"""samlib installs as a package: the wheel's contents, its console script, and its metadata.

The wheel is built offline (``pip wheel --no-build-isolation``, with the setuptools of this
environment) from a copy of the checkout, so that no ``build/`` folder left by an earlier
build can slip deleted modules into it, and installed with ``pip install --target``; the
installed copy then runs from a folder outside the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import samlib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("samlib/**/__init__.py"))
DATA_FILES = sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / "samlib" / "data").rglob("*") if p.is_file()
)
# What a copy of the checkout leaves out: VCS data, environments, build, cache and test output.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".cache",
    "test-artifacts",
)


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _lower_bounds(lines: list[str]) -> dict[str, str]:
    """``{normalised name[extras]: lower bound}`` of lines like ``dask[distributed]>=2024.1``."""
    bounds = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = req.specifier  # one lower bound each: what real users can satisfy
        assert spec.operator == ">=", f"not a NAME>=VERSION requirement: {line!r}"
        extras = "".join(f"[{e}]" for e in sorted(req.extras))
        bounds[canonicalize_name(req.name) + extras] = spec.version
    return bounds


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def test_requirements_txt_and_pyproject_list_the_same_dependencies():
    project = _pyproject()["project"]
    runtime = _lower_bounds(_requirement_lines(ROOT / "requirements.txt"))
    assert runtime, "requirements.txt lists no requirements"
    assert _lower_bounds(project["dependencies"]) == runtime
    dev = _lower_bounds(_requirement_lines(ROOT / "requirements-dev.txt"))
    assert _lower_bounds(project["optional-dependencies"]["dev"]) == dev


def test_pyproject_version_is_the_package_version():
    assert _pyproject()["project"]["version"] == samlib.__version__


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of this checkout, built without network access."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    # --no-build-isolation: setuptools comes from this environment, so nothing is downloaded.
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*cmd, "--no-index", "-w", str(tmp / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (found,) = (tmp / "dist").glob("samlib-*.whl")
    return found


@pytest.mark.slow
def test_wheel_holds_every_subpackage_the_bundled_files_and_the_console_script(wheel):
    assert wheel.name.startswith(f"samlib-{samlib.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert len(PACKAGES) > 1, PACKAGES
    wanted = [f"{pkg}/__init__.py" for pkg in PACKAGES]
    wanted += ["samlib/__main__.py", "samlib/weights/small_cnn.pt", "samlib/weights/README.md"]
    wanted += ["samlib/weights/small_cnn.json", *DATA_FILES]
    assert [name for name in wanted if name not in names] == []
    assert not any(name.split("/")[0] in {"ui", "pages", "tests", "scripts"} for name in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text
    assert re.search(r"^samlib\s*=\s*samlib\.cli\.parser:main$", text, re.M), text


@pytest.mark.slow
def test_installed_wheel_imports_and_runs_its_console_script(wheel, tmp_path):
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index"]
    done = subprocess.run(
        [*cmd, "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Run the installed copy's console-script function from outside the checkout, the way
    # the `samlib` script that pip writes calls it.
    script = (
        "import sys, importlib.metadata as md\n"
        "import samlib\n"
        "(ep,) = md.entry_points(group='console_scripts', name='samlib')\n"
        "print('FILE', samlib.__file__)\n"
        "print('VERSION', md.version('samlib'), samlib.__version__)\n"
        "sys.stdout.flush()\n"
        "sys.argv[0] = 'samlib'\n"
        "sys.exit(ep.load()(sys.argv[1:]))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SAMLIB_"))}
    env.update(PYTHONPATH=str(target), SAMLIB_CACHE_DIR=str(tmp_path / "cache"))

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", script, *argv],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert f"FILE {target / 'samlib' / '__init__.py'}" in helped.stdout
    assert f"VERSION {samlib.__version__} {samlib.__version__}" in helped.stdout
    for command in ("check", "download", "prompt", "everything", "evaluate", "train"):
        assert command in helped.stdout

    checked = run("check")
    assert checked.returncode == 0, checked.stderr
    assert "checkpoints:" in checked.stdout
    # The bundled demo model is found inside the installed package, not in the checkout.
    (small,) = [line for line in checked.stdout.splitlines() if line.split()[:1] == ["small_cnn"]]
    assert "cached" in small.split()
    assert small.split()[-1] == str(target / "samlib" / "weights" / "small_cnn.pt")
