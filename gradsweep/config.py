"""Configuration schema of one gradsweep run, registered in Hydra's ConfigStore.

Choice-valued keys are Enums so that Hydra itself rejects a bad value at
composition time and lists the valid choices; numeric ranges are checked by
`validate`, which the sweeper calls for every job before any job starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, get_args, get_type_hints

from omegaconf import DictConfig, OmegaConf


class Activation(str, Enum):
    sigmoid = "sigmoid"
    tanh = "tanh"
    relu = "relu"
    leaky_relu = "leaky_relu"
    gelu = "gelu"
    selu = "selu"
    identity = "identity"


class Init(str, Enum):
    default = "default"
    xavier_uniform = "xavier_uniform"
    xavier_normal = "xavier_normal"
    kaiming_uniform = "kaiming_uniform"
    kaiming_normal = "kaiming_normal"
    orthogonal = "orthogonal"
    normal = "normal"
    fan_in = "fan_in"


class Norm(str, Enum):
    none = "none"
    batch = "batch"
    layer = "layer"


class NormPosition(str, Enum):
    pre = "pre"
    post = "post"


class BiasInit(str, Enum):
    default = "default"
    zeros = "zeros"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"


class Loss(str, Enum):
    mean = "mean"
    mse = "mse"


@dataclass
class RunConfig:
    """One run: an MLP, its data, its training loop and what to record.

    Defaults reproduce the course exercise: 10 inputs, width 20, 1 output,
    5 Linear layers each followed by a sigmoid, PyTorch's default init,
    a batch of 32 N(0, 1) inputs, loss = mean of the output, step 0 only.
    """

    act: Activation = Activation.sigmoid
    depth: int = 5
    width: int = 20
    in_features: int = 10
    out_features: int = 1
    output_act: bool = True
    init: Init = Init.default
    init_scale: float = 1.0
    bias_init: BiasInit = BiasInit.default
    batchnorm: bool = False
    norm: Norm = Norm.none
    residual: bool = False
    branch_scale: Any = 1.0
    norm_position: NormPosition = NormPosition.pre
    clip: float | None = None
    device: Device = Device.cpu
    dtype: DType = DType.float32
    seed: int = 42
    data_seed: int = 0
    replicas: int = 1
    steps: int = 0
    log_every: int = 1
    hist_every: int = 1
    lr: float = 0.01
    momentum: float = 0.0
    optimizer: Optimizer = Optimizer.sgd
    batch_size: int = 32
    loss: Loss = Loss.mean


@dataclass
class AppConfig(RunConfig):
    """The Hydra app's root node: the run's keys plus where to write and how to execute.

    None of these keys is part of a run's identity (`run_key`, its run dir):
    `threads` decides the bits, so the run file records it, and a resumed sweep
    compares it (`gradsweep.execution`) instead of writing to other dirs.
    """

    experiment_name: str = "default"
    stats_file: str = "grad_stats.parquet"
    threads: Any = 1
    redo_mismatched: bool = False


RUN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))
# How a sweep's runs execute, not what they are: one value per sweep, since every value would
# write the same runs into the same run dirs.
EXECUTION_KEYS: tuple[str, ...] = ("threads", "redo_mismatched")
# The valid values of each choice-valued run key, from its Enum: the one list of choices.
CHOICES: dict[str, tuple[str, ...]] = {
    key: tuple(member.value for member in kind)
    for key, kind in get_type_hints(RunConfig).items()
    if isinstance(kind, type) and issubclass(kind, Enum)
}

_POSITIVE_INT = (
    "depth",
    "width",
    "in_features",
    "out_features",
    "replicas",
    "log_every",
    "hist_every",
    "batch_size",
)


# The float-valued run keys, from their types: each one's value must be finite.
FLOAT_KEYS: tuple[str, ...] = tuple(
    key
    for key, kind in get_type_hints(RunConfig).items()
    if kind is float or float in get_args(kind)
)
# What a float key holds besides being finite: a test and the words for it.
_FLOAT_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "init_scale": (lambda x: x > 0, "a finite number > 0"),
    "lr": (lambda x: x > 0, "a finite number > 0"),
    "clip": (lambda x: x > 0, "null (no clipping) or a finite number > 0"),
    "momentum": (lambda x: 0 <= x < 1, "in [0, 1)"),
}
_ANY_FINITE = (lambda x: True, "a finite number")


class ConfigValueError(ValueError):
    """A configuration value outside its valid range; the message names key, value and range."""


def choice_error(key: str, value: Any, choices: Sequence[str]) -> ValueError:
    """The one-line error for a bad value of a choice-valued key, listing the valid choices."""
    return ValueError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def check_choice(key: str, value: Any) -> None:
    """Raise a ValueError naming the bad value of a choice-valued key and its valid choices."""
    if value not in CHOICES[key]:
        raise choice_error(key, value, CHOICES[key])


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


# The depth-aware values of `branch_scale`: name -> the scale of a network of `depth` Linear layers.
BRANCH_SCALES: dict[str, Callable[[int], float]] = {
    "inv_sqrt_depth": lambda depth: 1.0 / math.sqrt(depth),
    "inv_depth": lambda depth: 1.0 / depth,
}


def branch_scale_text(value: Any) -> str:
    """`branch_scale` as the run file writes it: a named choice, or a number as Python's float.

    `1`, `1.0` and `'1.0'` are the same value, so they make the same run (and run key).
    """
    if isinstance(value, str) and value in BRANCH_SCALES:
        return value
    if not isinstance(value, bool):
        try:
            return repr(float(value))
        except (TypeError, ValueError):
            pass
    return str(value)


def branch_scale_value(text: str, depth: int) -> float:
    """The number a valid `branch_scale` (as `branch_scale_text`) stands for at `depth`."""
    named = BRANCH_SCALES.get(text)
    return named(depth) if named is not None else float(text)


def resolve_norm(batchnorm: bool, norm: Any) -> str:
    """The normalisation `batchnorm` and `norm` ask for together: `batchnorm=true` is `norm=batch`.

    A conflicting pair (`batchnorm=true norm=layer`) raises ConfigValueError naming both.
    """
    norm = _plain(norm)
    if not batchnorm:
        return norm
    if norm not in (Norm.none.value, Norm.batch.value):
        raise ConfigValueError(
            f"batchnorm=true conflicts with norm={norm}: batchnorm=true means norm=batch; "
            "give only one of them"
        )
    return Norm.batch.value


def _getter(cfg: Any) -> Any:
    """`get(key, default)` of a mapping, DictConfig or dataclass configuration."""
    if isinstance(cfg, (Mapping, DictConfig)):
        return cfg.get
    return lambda k, d=None: getattr(cfg, k, d)


def run_values(cfg: Any) -> dict[str, Any]:
    """The run's keys as plain Python values (Enums as their names), in schema order.

    `batchnorm` and `norm` agree (a conflicting pair raises ConfigValueError), and
    `branch_scale` is its `branch_scale_text`.
    """
    get = _getter(cfg)
    defaults = RunConfig()
    values = {k: _plain(get(k, getattr(defaults, k))) for k in RUN_KEYS}
    values["norm"] = resolve_norm(values["batchnorm"], values["norm"])
    values["batchnorm"] = values["norm"] == Norm.batch.value
    values["branch_scale"] = branch_scale_text(values["branch_scale"])
    return values


# The keys added with residual networks and LayerNorm, each with the values that give the network
# there was before them: left out of the run key there, so that such a run keeps its key and dir.
_LEGACY_VALUES: dict[str, tuple[Any, ...]] = {
    "norm": (Norm.none.value, Norm.batch.value),  # `batchnorm` holds which
    "residual": (False,),
    "branch_scale": (branch_scale_text(RunConfig.branch_scale),),
    "norm_position": (NormPosition.pre.value,),
}


def identity_values(cfg: Any) -> dict[str, Any]:
    """What a run's identity (`run_key`) is made of: `run_values` less keys at a legacy value."""
    return {k: v for k, v in run_values(cfg).items() if v not in _LEGACY_VALUES.get(k, (object(),))}


THREADS_AUTO = "auto"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_threads(value: Any) -> int:
    """The intra-op thread count the `threads` key stands for: an integer >= 1, or `auto`."""
    if value == THREADS_AUTO:
        return available_cores()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigValueError(
            f"threads={value!r} is invalid: threads must be an integer >= 1 or {THREADS_AUTO} "
            "(every core this process may use)"
        )
    return value


def _check_float(key: str, value: float | None) -> None:
    """A float key's value is finite and in its range (None only where the type allows it)."""
    if value is None:
        return
    accept, valid = _FLOAT_RANGES.get(key, _ANY_FINITE)
    if not (math.isfinite(value) and accept(value)):
        raise ConfigValueError(f"{key}={value!r} is invalid: {key} must be {valid}")


def validate(cfg: Any) -> dict[str, Any]:
    """Check numeric ranges that a type alone cannot express; return the plain values."""
    resolve_threads(_getter(cfg)("threads", AppConfig.threads))
    v = run_values(cfg)
    for key in _POSITIVE_INT:
        if not isinstance(v[key], int) or v[key] < 1:
            raise ConfigValueError(f"{key}={v[key]!r} is invalid: {key} must be an integer >= 1")
    if v["steps"] < 0:
        raise ConfigValueError(f"steps={v['steps']!r} is invalid: steps must be an integer >= 0")
    for key in FLOAT_KEYS:
        _check_float(key, v[key])
    if v["batchnorm"] and v["batch_size"] < 2:
        raise ConfigValueError(
            f"batch_size={v['batch_size']} is invalid: batch_size must be >= 2 with batchnorm=true"
            " (norm=batch)"
        )
    _check_architecture(v)
    if v["seed"] < 0 or v["data_seed"] < 0:
        raise ConfigValueError(
            f"seed={v['seed']}, data_seed={v['data_seed']} is invalid: seeds must be integers >= 0"
        )
    return v


def residual_layers(depth: int, width: int, in_features: int) -> list[bool]:
    """Which Linear layers get a skip connection under `residual=true`: the hidden ones whose
    input and output widths agree (layer 0 only when in_features == width; never the output)."""
    return [index < depth - 1 and (index > 0 or in_features == width) for index in range(depth)]


def _check_architecture(v: dict[str, Any]) -> None:
    """The normalisation and residual keys fit together and with the network's sizes."""
    scale = v["branch_scale"]
    if scale not in BRANCH_SCALES:
        try:
            number = float(scale)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            raise ConfigValueError(
                f"branch_scale={scale!r} is invalid: branch_scale must be a finite number > 0 or "
                f"one of: {', '.join(BRANCH_SCALES)}"
            )
    if v["norm"] == Norm.layer.value and v["width"] < 2:
        raise ConfigValueError(
            f"width={v['width']} is invalid: width must be >= 2 with norm=layer "
            "(LayerNorm of one feature is constant)"
        )
    if not v["residual"]:
        if scale != _LEGACY_VALUES["branch_scale"][0]:
            raise ConfigValueError(
                f"branch_scale={scale} is invalid without residual=true: it scales the "
                "residual branch, and there is none"
            )
        if v["norm_position"] != NormPosition.pre.value:
            raise ConfigValueError(
                f"norm_position={v['norm_position']} is invalid without residual=true: without "
                "a skip connection the norm sits after the Linear layer, before the activation"
            )
        return
    if v["norm"] == Norm.none.value and v["norm_position"] != NormPosition.pre.value:
        raise ConfigValueError(
            f"norm_position={v['norm_position']} is invalid with norm=none: there is no norm "
            "to place; set norm=batch or norm=layer"
        )
    if not any(residual_layers(v["depth"], v["width"], v["in_features"])):
        raise ConfigValueError(
            f"residual=true is invalid with depth={v['depth']}, in_features={v['in_features']}, "
            f"width={v['width']}: no hidden layer has equal input and output widths; use "
            "depth >= 3, or in_features=width"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_sweeper_options(group_size: Any, max_batch_size: Any) -> None:
    """`hydra.sweeper.group_size` is an integer >= 1, `max_batch_size` null or an integer >= 1."""
    if not _is_count(group_size):
        raise ConfigValueError(
            f"hydra.sweeper.group_size={group_size!r} is invalid: it must be an integer >= 1"
        )
    if max_batch_size is not None and not _is_count(max_batch_size):
        raise ConfigValueError(
            f"hydra.sweeper.max_batch_size={max_batch_size!r} is invalid: "
            "it must be null (every job in one batch) or an integer >= 1"
        )


def run_key(cfg: Any) -> str:
    """Stable 16-hex-digit hash of the run's resolved keys (not the Hydra node nor output names)."""
    payload = json.dumps(identity_values(cfg), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_dirname(cfg: Any) -> str:
    """Directory name of a run inside a sweep: readable main axes plus the run key.

    The same configuration always maps to the same name, whatever order or
    spelling the overrides had, which is what makes sweeps resumable.
    """
    v = run_values(cfg)
    clip = "none" if v["clip"] is None else f"{v['clip']:g}"
    layer_norm = "-ln1" if v["norm"] == Norm.layer.value else ""
    residual = ""
    if v["residual"]:
        position = "" if v["norm"] == Norm.none.value else f"-{v['norm_position']}"
        residual = f"-res{v['branch_scale']}{position}"
    return (
        f"{v['act']}-d{v['depth']}-w{v['width']}-{v['init']}x{v['init_scale']:g}"
        f"-bn{int(v['batchnorm'])}{layer_norm}{residual}-clip{clip}-s{v['seed']}-{run_key(v)[:8]}"
    )


def _run_dirname_resolver(*, _root_: DictConfig) -> str:
    return run_dirname({k: _root_[k] for k in RUN_KEYS if k in _root_})


def register_configs() -> None:
    """Register the schema and the run-dir resolver used by conf/hydra/ settings.

    Hydra's ConfigStore is imported here, so that reading runs never loads it.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="schema", node=AppConfig)
    if not OmegaConf.has_resolver("run_dirname"):
        OmegaConf.register_new_resolver("run_dirname", _run_dirname_resolver)
