"""What a user installs: ``pip install .`` and ``pip install -e .`` both give ``fastbody`` and
``fastbody.integrations``; the wheel holds the packages (every subpackage, ``py.typed``, the
entry points, the license) and no tests; the sdist is a source tree whose tests run; a folder
named ``fastbody`` that shadows the engine is one clear line, not a broken response."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path
from types import ModuleType

import pytest

import fastbody

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trees import ROOT, copy_source, venv_seeing_this_environment

ENV = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# What a source tree holds that is not source: never copied into a build, never in a dist.


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install(tmp_path: Path, editable: bool) -> None:
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    command += ["--target", str(target)] + (["-e", str(ROOT)] if editable else [str(ROOT)])
    subprocess.run(command, check=True, cwd=tmp_path, timeout=120, env=ENV)
    # -S: no site-packages (where the test venv's own install lives); only the target is seen.
    probe = (
        f"import site; site.addsitedir({str(target)!r}); import fastbody, fastbody.integrations as i; "
        "print(fastbody.__file__); print(i.__file__)"
    )
    command = [sys.executable, "-S", "-c", probe]
    shown = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60)
    if editable:  # the sources themselves, from the repository's own folders
        expected = [ROOT / "fastbody" / "__init__.py", ROOT / "integrations" / "__init__.py"]
    else:
        expected = [target / "fastbody" / "__init__.py", target / "fastbody" / "integrations" / "__init__.py"]
    assert shown.stdout.split() == [str(path) for path in expected]


# The wheel and the sdist, built once into tmp from a copy of this tree (builds write build/
# and *.egg-info beside the sources: not into the working tree others are using).


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    if importlib.util.find_spec("build") is None:
        pytest.skip(
            "the `build` package is not installed (it is in the test extras: pip install -e '.[test]')"
        )
    tmp = tmp_path_factory.mktemp("dists")
    source = tmp / "source"
    copy_source(source)
    # No isolation: offline, with this environment's setuptools (the test extras pin >= 77).
    command = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert built.returncode == 0, built.stdout + built.stderr
    # build makes the sdist first, then the wheel from the unpacked sdist: both must work.
    (sdist,) = (tmp / "dist").glob("fastbody-*.tar.gz")
    (wheel,) = (tmp / "dist").glob("fastbody-*.whl")
    yield sdist, wheel


def _sources(folder: Path, installed_as: str) -> set[str]:
    return {
        f"{installed_as}/{path.relative_to(folder).as_posix()}"
        for path in folder.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_wheel_holds_the_packages_and_no_tests(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
    # Every module of the engine and of every integrations subpackage (files/, cli/, proxy/,
    # uvicorn/ ...): a subpackage missing from [tool.setuptools] packages shows up here.
    expected = _sources(ROOT / "fastbody", "fastbody") | _sources(
        ROOT / "integrations", "fastbody/integrations"
    )
    assert {"fastbody/integrations/files/__init__.py", "fastbody/integrations/cli/__init__.py"} <= expected
    assert expected - names == set()
    assert "fastbody/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    packaged = {name for name in names if not name.startswith(info)}
    assert not [name for name in packaged if not name.startswith("fastbody/")], "only the fastbody package"
    tests = [
        name
        for name in packaged
        if "/tests/" in name or name.rsplit("/", 1)[-1].startswith(("test_", "conftest"))
    ]
    assert not tests, "no tests in the wheel"
    for line in (
        "[console_scripts]",
        "fastbody = fastbody.integrations.cli:main",
        "[gunicorn.workers]",
        "sync = fastbody.integrations.gunicorn:FastSync",
        "gthread = fastbody.integrations.gunicorn:FastThread",
        "uvicorn = fastbody.integrations.uvicorn.worker:FastUvicornWorker",
    ):
        assert line in entry_points.splitlines(), line
    assert metadata["License-Expression"] == "MIT"
    classifiers = metadata.get_all("Classifier") or []
    for classifier in ("Typing :: Typed", "Framework :: AsyncIO", "Intended Audience :: Developers"):
        assert classifier in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "PEP 639: the expression says it"


def test_sdist_is_the_source_tree(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    for needed in ("LICENSE", "README.md", "pyproject.toml", "tests/conftest.py", "tests/servers.py"):
        assert needed in names
    for folder in ("tests/apps", "examples", "examples/static", "fastbody", "integrations", "benchmarks"):
        tracked = {path.relative_to(ROOT).as_posix() for path in (ROOT / folder).iterdir() if path.is_file()}
        assert {name for name in tracked if not name.endswith(".pyc")} - names == set(), folder
    assert not [name for name in names if "__pycache__" in name or name.startswith((".venv", ".git/"))]


def test_sdist_tests_run(dists: tuple[Path, Path], tmp_path: Path) -> None:
    """Unpacked into tmp, installed (editable, as the README installs a checkout) into a fresh
    venv, a few tests run from the unpacked tree: conftest.py, servers.py and apps/ are there."""
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):  # 3.10.12, 3.11.4 and later
            archive.extractall(tmp_path, filter="data")
        else:
            archive.extractall(tmp_path)
    (tree,) = tmp_path.glob("fastbody-*")
    python = venv_seeing_this_environment(tmp_path / "venv")
    command = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."]
    subprocess.run(command, check=True, cwd=tree, timeout=180, env=ENV)
    probe = "import fastbody, fastbody.integrations as i; print(fastbody.__file__); print(i.__file__)"
    shown = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert shown.stdout.split() == [
        str(tree / "fastbody" / "__init__.py"),
        str(tree / "integrations" / "__init__.py"),
    ]
    tests = ["tests/test_framing.py", "tests/test_gunicorn.py::test_small_file_in_one_write"]
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    ran = subprocess.run(command, capture_output=True, text=True, cwd=tree, timeout=300, env=ENV)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert " passed" in ran.stdout and "skipped" not in ran.stdout, ran.stdout[-1000:]


# A folder named fastbody that shadows the engine


def _module(name: str, file: str | None, path: list[str], **names: object) -> ModuleType:
    module = ModuleType(name)
    if file is not None:
        module.__file__ = file
    module.__path__ = path
    module.__dict__.update(names)
    return module


def test_engine_check_decisions(tmp_path: Path) -> None:
    from fastbody.integrations._engine_check import NEEDED, problem

    engine = {name: object() for name in NEEDED}
    installed = tmp_path / "site" / "fastbody"  # fastbody/integrations inside the engine
    (installed / "integrations").mkdir(parents=True)
    (installed / "__init__.py").touch()
    good = _module("fastbody", str(installed / "__init__.py"), [str(installed)], **engine)
    assert problem(good, installed / "integrations") is None
    tree = tmp_path / "checkout"  # a source tree: integrations/ beside fastbody/
    (tree / "fastbody").mkdir(parents=True)
    (tree / "fastbody" / "__init__.py").touch()
    beside = _module("fastbody", str(tree / "fastbody" / "__init__.py"), [str(tree / "fastbody")], **engine)
    assert problem(beside, tree / "integrations") is None

    namespace = _module("fastbody", None, [str(tmp_path / "elsewhere" / "fastbody")])
    assert "found the folder" in (problem(namespace, installed / "integrations") or "")
    other = tmp_path / "old" / "fastbody"
    elsewhere = _module("fastbody", str(other / "__init__.py"), [str(other)], **engine)
    reason = problem(elsewhere, installed / "integrations") or ""
    assert f"found {other}, not the engine installed with these integrations ({installed})" in reason
    partial = _module("fastbody", str(installed / "__init__.py"), [str(installed)], transfer=object())
    assert "which has no ResponseWriter" in (problem(partial, installed / "integrations") or "")


SHADOWED = "fastbody.integrations: `import fastbody` found "


@pytest.fixture
def checkout_folder(tmp_path: Path) -> Path:
    """A folder holding a ``fastbody/`` source checkout (no ``__init__.py`` at its top)."""
    if Path(fastbody.__file__).resolve().parent != ROOT / "fastbody":
        pytest.skip("fastbody is not installed editable from this tree: a checkout folder shadows only that")
    work = tmp_path / "work"
    copy_source(work / "fastbody")
    return work


def test_shadowing_folder_fails_at_import(checkout_folder: Path) -> None:
    command = [sys.executable, "-c", "import fastbody.integrations.gunicorn"]
    ran = subprocess.run(command, capture_output=True, text=True, cwd=checkout_folder, timeout=60)
    assert ran.returncode == 1
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fastbody.integrations._engine_check.EngineShadowed: {SHADOWED}the folder "), last
    assert f"{checkout_folder / 'fastbody'}, which is not the fastbody engine" in last
    assert "run from another directory" in last


def test_shadowing_folder_stops_fastbody_serve_under_gunicorn(checkout_folder: Path, tmp_path: Path) -> None:
    """The issue's case: it answered 200 with an empty body; now gunicorn exits at start."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("uvicorn_worker")
    from servers import accepts, free_port

    port = free_port()
    script = Path(sys.executable).parent / "fastbody"
    command = [str(script), "serve", str(ROOT / "examples" / "static"), "--server", "gunicorn"]
    command += ["--port", str(port)]
    process = subprocess.Popen(
        command, cwd=checkout_folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode != 0
    assert f"{SHADOWED}the folder {checkout_folder / 'fastbody'}, which is not the fastbody engine" in output
    time.sleep(0.2)
    assert not accepts(port)
