# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Gradient flow: the five sections of the exercise, with gradsweep
#
# Each section builds the exercise's `nn.Sequential` with `gradsweep.model.build_mlp`
# (seed 42), computes the gradients the exercise asks for, and checks them against
# the gradsweep run file of the same configuration. Gradient lists hold the Linear
# layers' weight gradients in the order backpropagation reaches them: output layer
# first, so the exercise's ratio last / first is below 1 when gradients vanish.
# Set `GRADSWEEP_SWEEP_DIR` to a sweep dir to compare with its run files; runs it
# lacks are written into a temporary dir by the same code path (`gradsweep.experiment`).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow.dataset as ds
import torch
from torch import nn

from gradsweep.bins import HIST_BIN_LABELS, HIST_REGULAR_EDGES
from gradsweep.experiment import run_experiment
from gradsweep.model import build_mlp
from gradsweep.store import RunSet, run_metadata, write_run
from gradsweep.summary import run_metrics

EXTRA_DIR = Path(tempfile.mkdtemp(prefix="gradsweep-exercise-"))
SWEEP_DIR = Path(os.environ.get("GRADSWEEP_SWEEP_DIR") or EXTRA_DIR)
SEED, DATA_SEED = 42, 0
# gradsweep's step-0 batch: 32 N(0, 1) inputs drawn from data_seed in float64
x = torch.randn(1, 32, 10, generator=torch.Generator().manual_seed(DATA_SEED), dtype=torch.float64)[
    0
].float()


def weight_gradients(network: nn.Sequential, clip: float | None = None) -> list[torch.Tensor]:
    """Loss = mean of the output; Linear weight gradients, output layer first (backprop order)."""
    network.zero_grad()
    network(x).mean().backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(network.parameters(), clip)
    return [m.weight.grad.clone() for m in reversed(network) if isinstance(m, nn.Linear)]


def run_file_norms(config: dict, column: str = "grad_norm") -> np.ndarray:
    """Step-0 weight-gradient norms, output layer first, from the run file of `config`.

    The run file is written first if the sweep dir lacks it.
    """
    full = {"depth": 5, "seed": SEED, "data_seed": DATA_SEED, "steps": 0, "replicas": 1, **config}
    runs = RunSet([SWEEP_DIR, EXTRA_DIR])
    match = runs.runs
    for key, value in config.items():
        match = match[match[key].isna()] if value is None else match[match[key] == value]
    match = match[
        (match["seed"] == SEED) & (match["data_seed"] == DATA_SEED) & (match["depth"] == 5)
    ]
    if match.empty:
        result = run_experiment(full)
        path = EXTRA_DIR / "-".join(f"{k}{v}" for k, v in config.items()) / "grad_stats.parquet"
        write_run(
            result.stats,
            path,
            run_metadata(
                yaml.safe_dump(full),
                result.execution.metadata(),
                result.status[0],
                run_metrics(result.stats),
            ),
        )
        files = [path]
    else:
        files = [match["path"].iloc[0]]
    frame = RunSet(files).frame(
        columns=["layer", column],
        filter=(ds.field("step") == 0)
        & (ds.field("tensor") == "weight")
        & (ds.field("replica") == 0),
    )
    print(f"{config}: compared with {files[0]}")
    return frame.sort_values("layer")[column].to_numpy()[::-1]


def check(gradients: list[torch.Tensor], config: dict, column: str = "grad_norm") -> None:
    """Assert the notebook's gradient norms equal the run file's for the same configuration."""
    mine = np.array([g.double().norm().item() for g in gradients])
    theirs = run_file_norms(config, column)
    np.testing.assert_allclose(mine, theirs, rtol=1e-4)
    print(f"agrees with the run file: {config}")


# %% [markdown]
# ## Section 1: vanishing gradients with sigmoid

# %%
deep_sigmoid_network = build_mlp(act="sigmoid", depth=5, seed=SEED)
print(deep_sigmoid_network)
sigmoid_gradients = weight_gradients(deep_sigmoid_network)
sigmoid_norms = [g.norm().item() for g in sigmoid_gradients]
vanishing_ratio = sigmoid_norms[-1] / sigmoid_norms[0]
print(f"last / first (input side / output side) = {vanishing_ratio:.3e}")
check(sigmoid_gradients, {"act": "sigmoid", "batchnorm": False, "clip": None})

# %% [markdown]
# ## Section 2: tanh vanishes too, far less

# %%
deep_tanh_network = build_mlp(act="tanh", depth=5, seed=SEED)
tanh_gradients = weight_gradients(deep_tanh_network)
tanh_norms = [g.norm().item() for g in tanh_gradients]
print(f"tanh last / first = {tanh_norms[-1] / tanh_norms[0]:.3e}")
check(tanh_gradients, {"act": "tanh", "batchnorm": False, "clip": None})
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(sigmoid_norms, "o-", label="sigmoid")
ax.plot(tanh_norms, "s-", label="tanh")
ax.set(
    yscale="log",
    xlabel="Linear layer, in backprop order (0 = output side)",
    ylabel="weight-gradient L2 norm",
)
ax.legend()

# %% [markdown]
# ## Section 3: exploding gradients from N(0, 5^2) weights, and clipping

# %%
unstable_network = build_mlp(act="identity", depth=5, init="normal", init_scale=5.0, seed=SEED)
exploding_gradients = weight_gradients(unstable_network)
print("norms:", [f"{g.norm().item():.2e}" for g in exploding_gradients])
check(exploding_gradients, {"act": "identity", "init": "normal", "init_scale": 5.0, "clip": None})
clipped_gradients = weight_gradients(unstable_network, clip=1.0)
print(f"max norm after clipping: {max(g.norm().item() for g in clipped_gradients):.4f}")
check(
    clipped_gradients,
    {"act": "identity", "init": "normal", "init_scale": 5.0, "clip": 1.0},
    "grad_norm_clipped",
)

# %% [markdown]
# ## Section 4: ReLU and BatchNorm
# The ReLU network's output layer is left linear: a ReLU on the single output unit
# is dead for the whole batch at this seed, which would make every gradient zero.

# %%
relu_network = build_mlp(act="relu", depth=5, output_act=False, seed=SEED)
relu_gradients = weight_gradients(relu_network)
relu_norms = [g.norm().item() for g in relu_gradients]
print(f"relu last / first = {relu_norms[-1] / relu_norms[0]:.3e}")
check(relu_gradients, {"act": "relu", "output_act": False, "batchnorm": False, "clip": None})
batchnorm_network = build_mlp(act="sigmoid", depth=5, batchnorm=True, seed=SEED)
batchnorm_gradients = weight_gradients(batchnorm_network)
bn_norms = [g.norm().item() for g in batchnorm_gradients]
print(
    f"std of per-layer norms: without BN {np.std(sigmoid_norms):.4f}, "
    f"with BN {np.std(bn_norms):.4f}"
)
check(batchnorm_gradients, {"act": "sigmoid", "batchnorm": True, "clip": None})

# %% [markdown]
# ## Section 5: gradient statistics and histogram data

# %%
flat = torch.cat([g.flatten() for g in relu_gradients])
gradient_stats = {
    "mean": flat.mean().item(),
    "std": flat.std().item(),
    "min": flat.min().item(),
    "max": flat.max().item(),
}
gradient_histogram_data = flat.numpy()
print(gradient_stats)
print(
    f"{(gradient_histogram_data == 0).mean():.1%} exact zeros (dead ReLU units); "
    f"gradsweep bins: {len(HIST_BIN_LABELS)}"
)
fig, ax = plt.subplots(figsize=(7, 3))
nonzero = np.abs(gradient_histogram_data[gradient_histogram_data != 0])
ax.hist(np.log10(nonzero), bins=HIST_REGULAR_EDGES)
ax.set(
    xlabel="log10 |weight gradient| (non-zero elements)",
    ylabel="elements per binade (gradsweep's bins)",
)
