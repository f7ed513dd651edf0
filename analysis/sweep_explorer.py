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
# # Sweep explorer
#
# Loads any sweep dir (set `GRADSWEEP_SWEEP_DIR`) and rebuilds the report's
# figures with the report's own functions; change a frame or an axis list and
# re-run a cell to explore.

# %%
import io
import os

import matplotlib.pyplot as plt
from IPython.display import Image

from gradsweep import figures
from gradsweep.store import RunSet
from gradsweep.summary import scan, summarize

runs = RunSet([os.environ.get("GRADSWEEP_SWEEP_DIR", "outputs/sweeps/demo")])
for problem in runs.problems:
    print(problem)
totals, init = scan(runs)
summary = summarize(totals, init)
swept = figures.swept_axes(runs.runs)
print(f"{len(runs.files)} run files; swept axes: {swept}")


def show(fig: plt.Figure | None) -> Image | None:
    """A report figure as an inline PNG (the report's backend is Agg), or a note when it has nothing to show."""
    if fig is None:
        print("not drawn: this sweep holds nothing for it")
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return Image(buffer.getvalue())


summary.head()

# %%
show(figures.layer_profile(init, swept))

# %%
show(figures.ratio_heatmap(summary, swept))

# %%
show(figures.clipping(totals))

# %%
show(figures.batchnorm(init, swept))

# %%
show(figures.histograms(figures.histogram_counts(runs)))

# %%
show(figures.over_steps(figures.layer_steps(runs), swept))

# %%
show(figures.devices(init))
