"""Packaging: gradsweep installs from a wheel with its configuration, and users add their presets.

The wheel is installed into a fresh virtual environment that sees the test
environment's dependencies (torch, hydra, ...) but neither this checkout nor
its editable install, and is run from a directory outside the checkout.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import importlib.resources
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

from gradsweep.store import is_complete, read_metadata

CONF_FILES = sorted(p.relative_to(REPO / "conf").as_posix() for p in REPO.glob("conf/**/*.yaml"))
SOURCE_DIRS = ("gradsweep", "hydra_plugins")
# Modules the package imports only on use (importlib, where their extra imports): their
# module-level imports count as imports on use.
ON_USE_MODULES = {"gradsweep.probe.triton_kernel"}


def run_config(path: Path) -> dict:
    """The configuration a run file records in its footer."""
    return yaml.safe_load(read_metadata(path)["config"])


def canonical(name: str) -> str:
    """A distribution name in its normalised form (PyYAML -> pyyaml, hydra_core -> hydra-core)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def module_imports() -> dict[str, tuple[set[str], set[str]]]:
    """Each source module's imported modules (dotted): at module level, and inside functions."""
    imports = {}
    for directory in SOURCE_DIRS:
        for path in (REPO / directory).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            tree = ast.parse(path.read_text())
            at_module_level = {id(node) for node in tree.body}
            eager, lazy = imports.setdefault(name, (set(), set()))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found = {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found = {node.module}
                else:
                    continue
                (eager if id(node) in at_module_level else lazy).update(found)
    return imports


def imported_top_level_modules() -> tuple[set[str], set[str]]:
    """Top-level modules the package's source imports: at module level, and on use."""
    eager, lazy = set(), set()
    for name, (at_level, in_functions) in module_imports().items():
        (lazy if name in ON_USE_MODULES else eager).update(m.split(".")[0] for m in at_level)
        lazy.update(m.split(".")[0] for m in in_functions)
    return eager, lazy


def requirement_names(extra: bool) -> set[str]:
    """Canonical names of the package's requirements: the core ones, or those of its extras."""
    return {
        canonical(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
        for req in metadata.requires("gradsweep") or []
        if ("extra ==" in req) == extra
    }


def undeclared(modules: set[str], declared: set[str]) -> dict[str, list[str]]:
    """Third-party modules among `modules` that no distribution in `declared` provides."""
    providers = metadata.packages_distributions()
    third_party = modules - set(sys.stdlib_module_names) - {"gradsweep", "hydra_plugins"}
    return {
        module: providers.get(module, ["?"])
        for module in sorted(third_party)
        if not {canonical(d) for d in providers.get(module, [])} & declared
    }


def test_every_imported_third_party_module_is_a_declared_dependency() -> None:
    """Module-level imports are core dependencies; imports inside functions may be extras."""
    eager, lazy = imported_top_level_modules()
    core, extras = requirement_names(extra=False), requirement_names(extra=True)
    missing = undeclared(eager, core)
    assert not missing, f"imported but not in [project].dependencies: {missing}"
    missing = undeclared(lazy, core | extras)
    assert not missing, f"imported on use but in no dependency or extra: {missing}"


def test_modules_of_an_extra_are_imported_on_use_only() -> None:
    """No module imports one of ON_USE_MODULES at module level; each is imported on use."""
    imports = module_imports()
    assert ON_USE_MODULES <= imports.keys()
    eager = {m for at_level, _ in imports.values() for m in at_level}
    assert not eager & ON_USE_MODULES
    mentioned = "\n".join(p.read_text() for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))
    assert all(f'"{name}"' in mentioned for name in ON_USE_MODULES)


def test_the_configuration_is_the_package_gradsweep_conf() -> None:
    root = importlib.resources.files("gradsweep.conf")
    missing = [name for name in CONF_FILES if not root.joinpath(name).is_file()]
    assert CONF_FILES and not missing, f"not found under gradsweep.conf: {missing}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built without network access."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("gradsweep-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; a .pth lends it this environment's dependencies.

    A path listed in a .pth file is not a site dir, so the .pth files there (this
    checkout's editable install among them) are not run in the fresh venv.
    """
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    return venv / "bin"


def run_installed(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A command of the fresh venv, run from `cwd` (outside the checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_wheel_holds_the_configuration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in CONF_FILES if f"gradsweep/conf/{f}" not in names]
    assert not missing, f"{wheel.name} lacks gradsweep/conf/{missing}"
    sources = [
        path.relative_to(REPO).as_posix()
        for top in ("gradsweep", "hydra_plugins")
        for pattern in ("*.py", "*.c")
        for path in (REPO / top).rglob(pattern)
    ]
    assert sources
    missing = [source for source in sources if source not in names]
    assert not missing, f"{wheel.name} lacks {missing}"


def test_the_installed_wheel_is_used_and_not_this_checkout(installed: Path, tmp_path) -> None:
    code = (
        "import gradsweep, gradsweep.conf, hydra_plugins.gradsweep_sweeper as plugin; "
        "print(gradsweep.__file__, *gradsweep.conf.__path__, plugin.__file__, sep='\\n')"
    )
    proc = run_installed(installed, "python", "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    site = installed.parent.resolve()
    for path in proc.stdout.split():
        assert Path(path).resolve().is_relative_to(site), f"{path} is not in the fresh venv"


@pytest.mark.slow
def test_the_installed_wheel_sweeps_and_reports(installed: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_installed(
        installed,
        "gradsweep",
        "-m",
        "act=sigmoid,relu",
        "depth=2",
        "steps=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run_files = sorted(sweep.glob("*/grad_stats.parquet"))
    assert len(run_files) == 2 and all(is_complete(p) for p in run_files)
    assert {run_config(p)["act"] for p in run_files} == {"sigmoid", "relu"}
    report = run_installed(installed, "python", "-m", "gradsweep.report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert (sweep / "report" / "index.html").is_file()


PRESET = """\
# @package _global_
experiment_name: my_preset
act: relu
depth: 3
steps: 1
"""


@pytest.fixture
def user_conf(tmp_path: Path) -> Path:
    """A user's own config dir outside the package, holding experiment/my_preset.yaml."""
    conf = tmp_path / "my_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "my_preset.yaml").write_text(PRESET)
    return conf


@pytest.mark.parametrize("how", ["hydra.searchpath", "--config-dir"])
def test_a_user_preset_outside_the_package_is_selected_by_name(user_conf, tmp_path, how) -> None:
    where = (
        [f"hydra.searchpath=[file://{user_conf}]"]
        if how == "hydra.searchpath"
        else ["--config-dir", str(user_conf)]
    )
    run_dir = tmp_path / "run"
    proc = run_cli(*where, "experiment=my_preset", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = run_config(run_dir / "grad_stats.parquet")
    assert (config["act"], config["depth"], config["steps"]) == ("relu", 3, 1)
    assert config["experiment_name"] == "my_preset"
