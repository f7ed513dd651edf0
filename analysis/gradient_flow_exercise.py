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
# lacks are run into a temporary dir by `gradsweep.run`, the code path of `python -m gradsweep`,
# and every run file is read with `gradsweep.load`.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import gradsweep
from gradsweep.bins import HIST_BIN_LABELS, HIST_REGULAR_EDGES

EXTRA_DIR = Path(tempfile.mkdtemp(prefix="gradsweep-exercise-"))
SWEEP_RUNS = os.environ.get("GRADSWEEP_SWEEP_DIR")
SWEEP_DIR = Path(SWEEP_RUNS or EXTRA_DIR)
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
    """Step-0 weight-gradient norms, output layer first, from a run file of `config`.

    The sweep dir's run of this network and seed is used when it has one (any
    number of training steps: step 0 is the initialisation); otherwise
    `gradsweep.run` runs the configuration, as `python -m gradsweep` would.
    """
    full = {"seed": SEED, "data_seed": DATA_SEED, "depth": 5, **config}
    rows = gradsweep.load(SWEEP_DIR, steps=0, problems="ignore") if SWEEP_RUNS else None
    if rows is not None:
        for key, value in full.items():
            rows = rows[rows[key].isna()] if value is None else rows[rows[key] == value]
    if rows is None or rows.empty:
        rows = gradsweep.load(gradsweep.run(EXTRA_DIR, **full), steps=0)
        print(f"{config}: compared with a new run in {EXTRA_DIR}/")
    else:
        print(f"{config}: compared with {SWEEP_DIR}/ (run {rows['run_key'].iloc[0]})")
    weights = rows[rows["tensor"] == "weight"]
    return weights.sort_values("layer")[column].to_numpy()[::-1]


def check(gradients: list[torch.Tensor], config: dict, column: str = "grad_norm") -> None:
    """Assert the notebook's gradient norms equal the run file's for the same configuration."""
    mine = np.array([g.double().norm().item() for g in gradients])
    theirs = run_file_norms(config, column)
    np.testing.assert_allclose(mine, theirs, rtol=1e-4)
    print(f"agrees with the run file: {config}")


# %% [markdown]
# ## Section 1: vanishing gradients with sigmoid

# %%
deep_sigmoid_network = gradsweep.build_mlp(act="sigmoid", depth=5, seed=SEED)
print(deep_sigmoid_network)
sigmoid_gradients = weight_gradients(deep_sigmoid_network)
sigmoid_norms = [g.norm().item() for g in sigmoid_gradients]
vanishing_ratio = sigmoid_norms[-1] / sigmoid_norms[0]
print(f"last / first (input side / output side) = {vanishing_ratio:.3e}")
check(sigmoid_gradients, {"act": "sigmoid", "batchnorm": False, "clip": None})

# %% [markdown]
# ## Section 2: tanh vanishes too, far less

# %%
deep_tanh_network = gradsweep.build_mlp(act="tanh", depth=5, seed=SEED)
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
unstable_network = gradsweep.build_mlp(
    act="identity", depth=5, init="normal", init_scale=5.0, seed=SEED
)
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
relu_network = gradsweep.build_mlp(act="relu", depth=5, output_act=False, seed=SEED)
relu_gradients = weight_gradients(relu_network)
relu_norms = [g.norm().item() for g in relu_gradients]
print(f"relu last / first = {relu_norms[-1] / relu_norms[0]:.3e}")
check(relu_gradients, {"act": "relu", "output_act": False, "batchnorm": False, "clip": None})
batchnorm_network = gradsweep.build_mlp(act="sigmoid", depth=5, batchnorm=True, seed=SEED)
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

# %% [markdown]
# ## One step further: 50 layers, residual connections and LayerNorm
#
# The exercise stops at 5 layers. At 50, sigmoid, tanh and even ReLU all vanish.
# The same networks are then given a skip connection around every hidden layer
# (`residual=True`: h -> h + act(Linear(h))), LayerNorm after every hidden Linear
# layer (`norm="layer"`), and both (LayerNorm inside the branch, before the
# Linear layer). Output layers are linear, as for ReLU in section 4. Each network
# is one `gradsweep.run`, read back with `gradsweep.load`. The ratio is now taken
# of dL/dz, the gradient at each Linear layer's output: a weight gradient also
# carries the layer's input, which a residual stream inflates toward the output.

# %%
DEEP = 50
REMEDIES = {
    "plain": {},
    "residual": {"residual": True},
    "LayerNorm": {"norm": "layer"},
    "residual + LayerNorm": {"residual": True, "norm": "layer"},
}


def deep_preact_norms(act: str, **remedy) -> np.ndarray:
    """Step-0 norms of dL/dz of a 50-layer network, output layer first (backprop order)."""
    config = {"act": act, "depth": DEEP, "output_act": False, "seed": SEED, **remedy}
    rows = gradsweep.load(gradsweep.run(EXTRA_DIR, **config), steps=0)
    preact = rows[rows["tensor"] == "preact"]
    return preact.sort_values("layer")["grad_norm"].to_numpy()[::-1]


deep_norms = {
    (act, name): deep_preact_norms(act, **remedy)
    for act in ("sigmoid", "tanh", "relu")
    for name, remedy in REMEDIES.items()
}
for (act, name), norms in deep_norms.items():
    print(f"depth {DEEP}, {act}, {name}: dL/dz last / first = {norms[-1] / norms[0]:.3e}")
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True, constrained_layout=True)
for ax, act in zip(axes, ("sigmoid", "tanh", "relu")):
    for name in REMEDIES:
        ax.plot(deep_norms[act, name], label=name)
    ax.set(yscale="log", title=act, xlabel="Linear layer, in backprop order (0 = output side)")
axes[0].set_ylabel("dL/dz L2 norm at step 0")
axes[-1].legend(fontsize=8)

# %% [markdown]
# **Question.** Which change keeps dL/dz within a factor of 100 of the output
# layer's across all 50 layers, for all three activations? Why does LayerNorm
# alone rescue tanh but not sigmoid?
#
# **Answer.** The skip connection, alone or with LayerNorm. It adds the identity
# to every layer's Jacobian, so the gradient on the residual stream passes each
# layer unchanged plus what the branch adds: it cannot shrink layer after layer.
# (It can grow instead: every branch adds to it, which is why most ratios with a
# skip connection sit above 1.) LayerNorm divides each layer by the standard
# deviation of its input, which cancels the weights' scale sigma_w on the way
# back, but not the activation's own factor: the slope of tanh is 1 at 0, as
# large as its output, and the gradient stays level; the sigmoid's slope is at
# most 1/4, small next to its output (about 1/2, not centred at 0), which is
# what the next LayerNorm divides by, so the gradient still shrinks at every
# layer. The report's remedies figure
# (`python -m gradsweep -m experiment=remedies_depth50`) draws this comparison
# with seed bands and the theory's predictions.
