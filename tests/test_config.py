"""Schema validation, run keys and run-dir names."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from gradsweep import theory
from gradsweep.config import (
    CHOICES,
    FLOAT_KEYS,
    Activation,
    AppConfig,
    BiasInit,
    ConfigValueError,
    Init,
    Loss,
    RunConfig,
    available_cores,
    branch_scale_value,
    check_choice,
    check_sweeper_options,
    residual_layers,
    resolve_threads,
    run_dirname,
    run_key,
    run_values,
    validate,
)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"depth": 0}, "depth=0"),
        ({"width": -3}, "width=-3"),
        ({"init_scale": -1.0}, "init_scale=-1.0"),
        ({"clip": 0.0}, "clip=0.0"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"steps": -1}, "steps=-1"),
        ({"replicas": 0}, "replicas=0"),
        ({"batchnorm": True, "batch_size": 1}, "batch_size=1"),
        ({"momentum": 1.0}, "momentum=1.0"),
    ],
)
def test_validate_names_key_value_and_range(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigValueError) as err:
        validate({**run_values(RunConfig()), **overrides})
    message = str(err.value)
    assert needle in message
    assert "must be" in message


@pytest.mark.parametrize("value", [0, -2, 1.5, "many", True, None])
def test_threads_must_be_a_positive_integer_or_auto(value: object) -> None:
    with pytest.raises(ConfigValueError) as err:
        validate({**run_values(RunConfig()), "threads": value})
    assert str(err.value) == (
        f"threads={value!r} is invalid: threads must be an integer >= 1 or auto "
        "(every core this process may use)"
    )


def test_threads_resolve_to_a_count_and_are_not_part_of_the_run_key() -> None:
    assert resolve_threads(3) == 3 and resolve_threads("auto") == available_cores() >= 1
    app = AppConfig(threads=4, redo_mismatched=True)
    assert validate(app) == run_values(RunConfig())
    assert run_key(app) == run_key(RunConfig()) and run_dirname(app) == run_dirname(RunConfig())


def test_the_float_keys_come_from_the_schema_types() -> None:
    assert FLOAT_KEYS == ("init_scale", "clip", "lr", "momentum")


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_key_refuses_infinite_and_nan_values(key: str, value: float) -> None:
    with pytest.raises(ConfigValueError) as err:
        validate({**run_values(RunConfig()), key: value})
    message = str(err.value)
    assert message.startswith(f"{key}={value!r} is invalid: {key} must be ")
    assert "finite" in message or "[0, 1)" in message


@pytest.mark.parametrize(
    ("group_size", "max_batch_size", "needle"),
    [
        (0, None, "hydra.sweeper.group_size=0 is invalid: it must be an integer >= 1"),
        (True, None, "hydra.sweeper.group_size=True is invalid"),
        (1, 0, "hydra.sweeper.max_batch_size=0 is invalid: it must be null"),
        (2, -5, "hydra.sweeper.max_batch_size=-5 is invalid"),
    ],
)
def test_sweeper_options_are_checked(group_size, max_batch_size, needle: str) -> None:
    check_sweeper_options(4, None)
    check_sweeper_options(1, 8)
    with pytest.raises(ConfigValueError, match=re.escape(needle)):
        check_sweeper_options(group_size, max_batch_size)


def test_defaults_are_valid_and_reproduce_the_exercise() -> None:
    v = validate(RunConfig())
    assert (v["act"], v["depth"], v["width"], v["in_features"], v["out_features"]) == (
        "sigmoid",
        5,
        20,
        10,
        1,
    )
    assert (v["init"], v["batch_size"], v["loss"], v["steps"], v["clip"]) == (
        "default",
        32,
        "mean",
        0,
        None,
    )


def test_run_key_is_stable_and_sensitive() -> None:
    base = run_values(RunConfig())
    assert run_key(base) == run_key(RunConfig())
    assert len(run_key(base)) == 16
    keys = {
        run_key({**base, k: v})
        for k, v in [("depth", 6), ("seed", 1), ("clip", 1.0), ("lr", 0.1), ("act", "tanh")]
    }
    assert len(keys) == 5 and run_key(base) not in keys


def test_run_dirname_names_main_axes_and_key() -> None:
    name = run_dirname({**run_values(RunConfig()), "act": "relu", "clip": 1.0, "batchnorm": True})
    assert name.startswith("relu-d5-w20-defaultx1-bn1-clip1-s42-")
    assert name.endswith(
        run_key({**run_values(RunConfig()), "act": "relu", "clip": 1.0, "batchnorm": True})[:8]
    )


def test_choices_are_the_enums_and_theory_takes_them_from_there() -> None:
    assert CHOICES["act"] == tuple(a.value for a in Activation)
    assert CHOICES["init"] == tuple(i.value for i in Init)
    assert CHOICES["bias_init"] == tuple(b.value for b in BiasInit)
    assert CHOICES["loss"] == tuple(loss.value for loss in Loss)
    assert (theory.ACTIVATIONS, theory.INIT_SCHEMES, theory.BIAS_INITS) == (
        CHOICES["act"],
        CHOICES["init"],
        CHOICES["bias_init"],
    )
    assert {"depth", "clip", "seed"}.isdisjoint(CHOICES)


def test_check_choice_names_key_value_and_choices() -> None:
    check_choice("act", "tanh")
    with pytest.raises(ValueError, match="act='swish' is not valid; choose one of: sigmoid, tanh,"):
        check_choice("act", "swish")


def test_reading_the_configuration_does_not_load_hydras_config_store() -> None:
    code = (
        "import sys, gradsweep.config\n"
        "assert 'hydra.core.config_store' not in sys.modules, 'ConfigStore imported'\n"
        "gradsweep.config.register_configs()\n"
        "assert 'hydra.core.config_store' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_runs_that_use_no_new_key_keep_the_key_they_had_before_norm_and_residual() -> None:
    """The keys a sweep dir of the earlier keys holds, so that it resumes without redoing runs."""
    base = run_values(RunConfig())
    assert run_key(base) == "c52955f1a9319203"
    assert run_key({**base, "act": "relu", "batchnorm": True, "depth": 20}) == "d4f6dac204cfb67f"
    spelled_out = {"norm": "none", "residual": False, "branch_scale": 1, "norm_position": "pre"}
    assert run_key({**base, **spelled_out}) == run_key(base)
    assert run_dirname({**base, **spelled_out}) == run_dirname(base)


def test_batchnorm_true_and_norm_batch_are_one_run() -> None:
    base = run_values(RunConfig())
    by_flag, by_norm = (
        run_values({**base, "batchnorm": True}),
        run_values({**base, "norm": "batch"}),
    )
    assert by_flag == by_norm and (by_flag["norm"], by_flag["batchnorm"]) == ("batch", True)
    assert run_key(by_flag) == run_key(by_norm) and run_dirname(by_flag) == run_dirname(by_norm)


def test_new_keys_away_from_their_defaults_make_other_runs() -> None:
    base = run_values(RunConfig())
    variants = [
        {"norm": "layer"},
        {"residual": True},
        {"residual": True, "branch_scale": 0.5},
        {"residual": True, "branch_scale": "inv_sqrt_depth"},
        {"residual": True, "norm": "layer"},
        {"residual": True, "norm": "layer", "norm_position": "post"},
    ]
    keys = {run_key({**base, **v}) for v in variants}
    assert len(keys) == len(variants) and run_key(base) not in keys
    name = run_dirname({**base, **variants[-1]})
    assert name.startswith("sigmoid-d5-w20-defaultx1-bn0-ln1-res1.0-post-clipnone-s42-")


def test_branch_scale_is_written_one_way() -> None:
    base = run_values(RunConfig())
    assert {run_values({**base, "branch_scale": s})["branch_scale"] for s in (1, 1.0, "1")} == {
        "1.0"
    }
    assert run_values({**base, "branch_scale": "inv_depth"})["branch_scale"] == "inv_depth"
    assert branch_scale_value("inv_sqrt_depth", 16) == 0.25
    assert branch_scale_value("inv_depth", 16) == 1 / 16 and branch_scale_value("0.5", 16) == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"batchnorm": True, "norm": "layer"},
            "batchnorm=true conflicts with norm=layer: batchnorm=true means norm=batch; "
            "give only one of them",
        ),
        (
            {"norm": "batch", "batch_size": 1},
            "batch_size=1 is invalid: batch_size must be >= 2 with batchnorm=true (norm=batch)",
        ),
        (
            {"norm": "layer", "width": 1},
            "width=1 is invalid: width must be >= 2 with norm=layer (LayerNorm of one feature "
            "is constant)",
        ),
        (
            {"branch_scale": 0.5},
            "branch_scale=0.5 is invalid without residual=true: it scales the residual branch, "
            "and there is none",
        ),
        (
            {"norm": "layer", "norm_position": "post"},
            "norm_position=post is invalid without residual=true: without a skip connection "
            "the norm sits after the Linear layer, before the activation",
        ),
        (
            {"residual": True, "norm_position": "post"},
            "norm_position=post is invalid with norm=none: there is no norm to place; set "
            "norm=batch or norm=layer",
        ),
        (
            {"residual": True, "depth": 2},
            "residual=true is invalid with depth=2, in_features=10, width=20: no hidden layer "
            "has equal input and output widths; use depth >= 3, or in_features=width",
        ),
        (
            {"residual": True, "depth": 1, "in_features": 20},
            "residual=true is invalid with depth=1, in_features=20, width=20",
        ),
        (
            {"residual": True, "branch_scale": "1/sqrt(depth)"},
            "branch_scale='1/sqrt(depth)' is invalid: branch_scale must be a finite number > 0 "
            "or one of: inv_sqrt_depth, inv_depth",
        ),
        ({"residual": True, "branch_scale": 0}, "branch_scale='0.0' is invalid"),
        ({"residual": True, "branch_scale": math.inf}, "branch_scale='inf' is invalid"),
        ({"residual": True, "branch_scale": True}, "branch_scale='True' is invalid"),
    ],
)
def test_norm_and_residual_combinations_that_cannot_work_are_refused(
    overrides: dict, message: str
) -> None:
    with pytest.raises(ConfigValueError) as err:
        validate({**run_values(RunConfig()), **overrides})
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [
        {"residual": True, "depth": 2, "in_features": 20},
        {"residual": True, "norm": "batch", "norm_position": "post", "branch_scale": "inv_depth"},
        {"residual": True, "norm": "layer", "act": "identity", "branch_scale": 0.1},
        {"norm": "layer", "batch_size": 1},
    ],
)
def test_norm_and_residual_combinations_that_work_are_valid(overrides: dict) -> None:
    validate({**run_values(RunConfig()), **overrides})


def test_residual_layers_are_the_hidden_layers_of_equal_widths() -> None:
    assert residual_layers(4, 20, 10) == [False, True, True, False]
    assert residual_layers(4, 20, 20) == [True, True, True, False]
