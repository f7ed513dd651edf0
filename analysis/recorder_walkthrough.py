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
# # Recording your own model with `gradsweep.Recorder`
#
# gradsweep's sweeps measure its own MLPs. `gradsweep.Recorder` takes the same
# measurements (every statistic, the exact binade histograms, dL/d(output)) from
# your own training loop, for any `nn.Module`, into the same run file. This
# notebook trains a small CNN on synthetic images in a plain loop, records it
# with three added lines, reads the run file back, checks one row against the
# gradient itself and builds the report. Set `GRADSWEEP_RECORDER_DIR` to keep the
# recordings (a temporary dir otherwise).

# %%
import io
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display
from torch import nn

import gradsweep
from gradsweep.report import build_report

OUT = Path(os.environ.get("GRADSWEEP_RECORDER_DIR") or tempfile.mkdtemp(prefix="recorder-"))
torch.manual_seed(0)

# %% [markdown]
# ## A model and data of your own
#
# Images of 3 x 16 x 16 pixels: each of the 4 classes adds its own fixed pattern,
# twice, to Gaussian noise, so the CNN has something to learn. Any `nn.Module`
# works the same way; BatchNorm2d has parameters, so it is recorded too.

# %%
patterns = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def batch(step: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    labels = torch.randint(0, 4, (size,), generator=gen)
    return torch.randn(size, 3, 16, 16, generator=gen) + 2 * patterns[labels], labels


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )


model = small_cnn()
initial = small_cnn()
initial.load_state_dict(model.state_dict())  # kept to check the first recorded step below
print(model)

# %% [markdown]
# ## Recording: three lines in the loop
#
# Construct the recorder, call `recorder.step(step, loss)` after `backward()` and
# before `optimizer.step()`, and close it (here the `with` block does). Forward
# hooks catch dL/d(output) of the watched modules; the forward code is unchanged.
# Steps that are multiples of `log_every` are measured; every `hist_every`-th of
# those also gets histograms.

# %%
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
with gradsweep.Recorder(
    model,
    OUT / "small_cnn",
    watch_outputs=(nn.Conv2d, nn.Linear),
    log_every=5,
    hist_every=2,
    config={"lr": 0.05, "momentum": 0.9},
) as recorder:
    for step in range(41):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        recorder.step(step, loss)
        optimizer.step()
        optimizer.zero_grad()
print(f"run file: {recorder.path}")

# %% [markdown]
# ## The run file
#
# One row per logged step and tensor: `module` is the qualified module name,
# `tensor` the parameter's own name or `output` (dL/d(module output)), and
# `layer` the module's order among the recorded modules, the layer axis of the
# report's figures.

# %%
frame = gradsweep.load(recorder.path)
first = frame[frame["step"] == 0]
print(first[["layer", "module", "tensor", "numel", "grad_norm", "param_norm"]].to_string())
print(f"logged steps: {sorted(int(s) for s in frame['step'].unique())}")
losses = frame.groupby("step")["loss"].first()
print(f"loss at step 0: {losses.iloc[0]:.3f}, at step 40: {losses.iloc[-1]:.3f}")

# %% [markdown]
# ## One row against the gradient itself
#
# The same first batch through the model as it was at step 0 gives the gradient
# of the second convolution's weight; its norm, extremes and mean are the row's.

# %%
x, y = batch(0)
nn.functional.cross_entropy(initial(x), y).backward()
gradient = initial[4].weight.grad.double()
row = first[(first["module"] == "4") & (first["tensor"] == "weight")].iloc[0]
measured = row[["grad_norm", "grad_min", "grad_max", "grad_mean"]].to_numpy(dtype=float)
direct = np.array(
    [gradient.norm().item(), gradient.min().item(), gradient.max().item(), gradient.mean().item()]
)
np.testing.assert_allclose(measured, direct, rtol=1e-5, atol=1e-9)
print("the run file's row agrees with the gradient: module 4 (Conv2d) weight at step 0")

# %% [markdown]
# ## Gradient norm per module over training

# %%
params = frame[frame["param_norm"].notna()]
per_module = params.assign(square=params["grad_norm"] ** 2).groupby(["step", "module"])["square"]
norms = np.sqrt(per_module.sum()).unstack("module")
fig, ax = plt.subplots(figsize=(7, 3))
norms.plot(ax=ax, logy=True, marker="o")
ax.set(xlabel="step", ylabel="parameter-gradient L2 norm per module")
buffer = io.BytesIO()
fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
plt.close(fig)
display(Image(buffer.getvalue()))

# %% [markdown]
# ## The report
#
# `python -m gradsweep.report PATH` (or `build_report`) reads Recorder files like
# sweep files. Figures that need the MLP's layer axis use the module order; those
# that need gradsweep's MLP configuration or a theory prediction are listed as not
# applying to a recorded model.

# %%
report = build_report([OUT], OUT / "report")
print(f"report: {report.out_dir / 'index.html'}")
print(f"recording figures: {sorted(report.recorded.figures)}")
print(report.recorded.summary.to_string(index=False))
display(Image(filename=str(report.recorded.figures["module_profile"].paths[0])))
