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
# re-run a cell to explore. A figure is a list of pages (one per value of an
# axis that does not fit as hue or panel), each printed with what it pools.

# %%
import io
import os

import matplotlib.pyplot as plt
from IPython.display import Image, display

from gradsweep import figures
from gradsweep.drawn import drawn
from gradsweep.store import RunSet
from gradsweep.summary import scan, summarize

runs = RunSet([os.environ.get("GRADSWEEP_SWEEP_DIR", "outputs/sweeps/demo")])
for problem in runs.problems:
    print(problem)
totals, init = scan(runs)
summary = summarize(totals, init)
swept = figures.swept_axes(runs.runs)
print(f"{len(runs.files)} run files; swept axes: {swept}")


def show(figs: list[plt.Figure]) -> None:
    """A report figure's pages as inline PNGs (the report's backend is Agg), or a note if none."""
    if not figs:
        print("not drawn: this sweep holds nothing for it")
    for fig in figs:
        record = drawn(fig)
        print(record.page.title or "", record.pooling)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        display(Image(buffer.getvalue()))


summary.head()

# %%
show(figures.layer_profile(init, swept))

# %%
show(figures.ratio_heatmap(summary, swept))

# %%
show(figures.clipping(totals, swept))

# %%
show(figures.batchnorm(init, swept))

# %%
show(figures.histograms(figures.histogram_counts(runs), swept))

# %%
show(figures.over_steps(figures.layer_steps(runs), swept))

# %%
show(figures.devices(init))
