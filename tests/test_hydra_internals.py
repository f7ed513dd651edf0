"""gradsweep.hydra_internals: each Hydra internal it uses still exists and behaves as relied on.

A failure here names the Hydra API that changed in the installed hydra-core, so
that a Hydra upgrade is fixed in gradsweep/hydra_internals.py and nowhere else.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import hydra
import pytest
from hydra import initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from hydra.types import RunMode
from omegaconf import OmegaConf


def changed(api: str, what: str) -> str:
    """The failure message: which Hydra API changed, how, and where gradsweep adapts to it."""
    return (
        f"hydra-core {hydra.__version__} changed {api}: {what}. "
        "gradsweep uses it through gradsweep/hydra_internals.py; adapt that module."
    )


def require(owner: Any, name: str, api: str) -> Any:
    """owner.name, or a failure naming the Hydra API that is gone."""
    if not hasattr(owner, name):
        pytest.fail(changed(api, "it no longer exists"), pytrace=False)
    return getattr(owner, name)


def require_params(func: Callable, expected: list[str], api: str) -> None:
    """Fail naming the API when its leading parameters are no longer `expected`."""
    got = list(inspect.signature(func).parameters)
    if got[: len(expected)] != expected:
        pytest.fail(changed(api, f"parameters {got}, expected {expected}"), pytrace=False)


@pytest.fixture(scope="module")
def internals() -> ModuleType:
    """gradsweep.hydra_internals, or a failure naming the Hydra module it could not import."""
    try:
        return importlib.import_module("gradsweep.hydra_internals")
    except ImportError as err:
        pytest.fail(changed(f"module {err.name}", f"importing it fails ({err})"), pytrace=False)


@pytest.fixture
def loader(tmp_path: Path) -> Iterator[ConfigLoader]:
    """Hydra's config loader over a tiny primary config with one config group, `db`."""
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "mysql.yaml").write_text("port: 3306\n")
    (tmp_path / "config.yaml").write_text("defaults:\n  - db: mysql\n  - _self_\nx: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
LOADER_IMPL = "hydra._internal.config_loader_impl.ConfigLoaderImpl"


@dataclass
class Typed:
    depth: int = 5


def parse(*overrides: str) -> list:
    return OverridesParser.create().parse_overrides(list(overrides))


def test_basic_sweeper_is_a_sweeper_built_from_max_batch_size_and_params(internals) -> None:
    api = BASIC_SWEEPER
    basic = internals.BasicSweeper
    assert issubclass(basic, Sweeper), changed(api, "it is no longer a Sweeper")
    require_params(basic.__init__, ["self", "max_batch_size", "params"], f"{api}.__init__")
    setup_params = ["self", "hydra_context", "task_function", "config"]
    require_params(basic.setup, setup_params, f"{api}.setup")
    sweeper = basic(max_batch_size=None, params=None)
    for name in ("hydra_context", "config", "launcher", "max_batch_size"):
        require(sweeper, name, f"{api}.{name}")


def test_sweeper_params_are_override_strings(internals) -> None:
    api = f"{BASIC_SWEEPER}._parse_config"
    require_params(require(internals.BasicSweeper, "_parse_config", api), ["self"], api)
    sweeper = internals.BasicSweeper(max_batch_size=None, params={"a": "1,2", "b": "x"})
    assert internals.sweeper_params(sweeper) == ["a=1,2", "b=x"], changed(api, "other result")


def test_expand_sweep_lists_every_job_in_order(internals) -> None:
    api = f"{BASIC_SWEEPER}.split_arguments"
    split = require(internals.BasicSweeper, "split_arguments", api)
    require_params(split, ["overrides", "max_batch_size"], api)
    jobs = internals.expand_sweep(parse("a=1,2", "b=range(0,2)", "c=x"))
    expected = [
        ["a=1", "b=0", "c=x"],
        ["a=1", "b=1", "c=x"],
        ["a=2", "b=0", "c=x"],
        ["a=2", "b=1", "c=x"],
    ]
    assert jobs == expected, changed(api, f"jobs {jobs}")


def test_batches_split_jobs_by_max_batch_size(internals) -> None:
    api = f"{BASIC_SWEEPER}.split_overrides_to_chunks"
    chunks = require(internals.BasicSweeper, "split_overrides_to_chunks", api)
    require_params(chunks, ["lst", "n"], api)
    jobs = [["a=1"], ["a=2"], ["a=3"]]
    assert internals.batches(jobs, 2) == [jobs[:2], jobs[2:]], changed(api, "other batches")
    assert internals.batches(jobs, None) == [jobs], changed(api, "None no longer one batch")


def test_is_config_group_tells_groups_from_keys(internals, loader) -> None:
    api = f"{LOADER_IMPL}.repository.group_exists"
    repository = require(loader, "repository", f"{LOADER_IMPL}.repository")
    require_params(require(repository, "group_exists", api), ["config_path"], api)
    assert internals.is_config_group(loader, "db"), changed(api, "a group is not found")
    assert not internals.is_config_group(loader, "x"), changed(api, "a key is a group")


def test_compose_job_config_applies_the_job_overrides(internals, loader) -> None:
    api = f"{LOADER_IMPL}.load_sweep_config"
    compose = require(loader, "load_sweep_config", api)
    require_params(compose, ["master_config", "sweep_overrides"], api)
    master = loader.load_configuration("config", ["x=1,2"], RunMode.MULTIRUN)
    job = internals.compose_job_config(loader, master, ["x=2", "db.port=1"])
    assert (job.x, job.db.port) == (2, 1), changed(api, "the job's overrides are not applied")
    assert "hydra" in job, changed(api, "the job config has no hydra node")


def test_apply_value_overrides_sets_typed_values_and_rejects_bad_ones(internals) -> None:
    api = f"{LOADER_IMPL}._apply_overrides_to_config"
    impl = importlib.import_module("hydra._internal.config_loader_impl").ConfigLoaderImpl
    apply = require(impl, "_apply_overrides_to_config", api)
    require_params(apply, ["overrides", "cfg"], api)
    cfg = OmegaConf.structured(Typed)
    internals.apply_value_overrides(parse("depth=3"), cfg)
    assert cfg.depth == 3, changed(api, "a value is not applied")
    for bad in ("depth=abc", "width=3"):
        with pytest.raises(ConfigCompositionException):
            internals.apply_value_overrides(parse(bad), cfg)
            pytest.fail(changed(api, f"{bad} is no longer rejected"), pytrace=False)


def test_failed_job_error_is_the_exception_the_job_raised(internals) -> None:
    api = "hydra.core.utils.JobReturn._return_value"
    if "_return_value" not in [f.name for f in fields(JobReturn)]:
        pytest.fail(changed(api, "the field no longer exists"), pytrace=False)
    error = ValueError("bad run")
    result = JobReturn(status=JobStatus.FAILED)
    result.return_value = error
    assert internals.failed_job_error(result) is error, changed(api, "other value")


def test_exceptions_raised_makes_run_and_report_raise_the_error_itself(
    internals, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = "hydra._internal.utils.run_and_report (HYDRA_FULL_ERROR)"
    utils = importlib.import_module("hydra._internal.utils")
    run_and_report = require(utils, "run_and_report", api)
    error = ConfigCompositionException("bad override")
    monkeypatch.delenv(internals.FULL_ERROR_ENV, raising=False)

    def fail() -> None:
        raise error

    with pytest.raises(SystemExit):
        run_and_report(fail)
        pytest.fail(changed(api, "an error no longer exits"), pytrace=False)
    with internals.exceptions_raised(), pytest.raises(ConfigCompositionException) as raised:
        run_and_report(fail)
    assert raised.value is error, changed(api, "the error is not raised as it is")
    assert internals.FULL_ERROR_ENV not in os.environ, "the environment is not restored"


def test_a_callback_stops_hydra_only_with_system_exit(internals, capsys) -> None:
    api = "hydra._internal.callbacks.Callbacks._notify"
    callbacks = importlib.import_module("hydra._internal.callbacks")
    runner = require(callbacks, "Callbacks", "hydra._internal.callbacks.Callbacks")()

    class Raising(Callback):
        def on_run_start(self, config, **kwargs) -> None:
            raise ValueError("swallowed")

    class Stopping(Callback):
        def on_run_start(self, config, **kwargs) -> None:
            internals.stop_from_callback("gradsweep: error: depth=0 is invalid", 2)

    runner.callbacks = [Raising()]
    with pytest.warns(UserWarning, match="swallowed"):
        runner.on_run_start(config=OmegaConf.create())
    runner.callbacks = [Stopping()]
    with pytest.raises(SystemExit) as stopped:
        runner.on_run_start(config=OmegaConf.create())
        pytest.fail(changed(api, "SystemExit from a callback is swallowed"), pytrace=False)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "gradsweep: error: depth=0 is invalid\n"


def test_hydras_plugin_scan_redefines_core_plugins_so_basic_sweeper_is_imported_late(
    internals, tmp_path: Path
) -> None:
    api = "hydra.core.plugins.Plugins (plugin scan of hydra._internal.core_plugins)"
    code = (
        "import sys, gradsweep.hydra_internals as internals\n"
        "assert 'hydra._internal.core_plugins.basic_sweeper' not in sys.modules\n"
        "early = internals.BasicSweeper\n"
        "from hydra.core.plugins import Plugins\n"
        "Plugins.instance()\n"
        "late = sys.modules['hydra._internal.core_plugins.basic_sweeper'].BasicSweeper\n"
        "print(early is late)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "True":
        pytest.fail(
            changed(
                api,
                "the scan no longer redefines an imported class; a late import "
                "of BasicSweeper in gradsweep/hydra_internals.py is no longer needed",
            ),
            pytrace=False,
        )
