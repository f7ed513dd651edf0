"""Mean-field predictions attached to a run's rows, so that every run file carries its own theory.

Two columns are added; both are null except on `preact` rows:

* `pred_preact_factor`: predicted |dL/dz_l| / |dL/dz_{l+1}| (`theory.predict_preact_factors`),
  null on the output layer, which has no layer above it;
* `pred_preact_norm`: predicted |dL/dz_l|, anchored at the measured output-layer
  preact norm of the same replica and step (`theory.predict_preact_norms`).

The theory describes networks at initialisation, so the prediction at step 0 is
the one to compare; later steps carry the same factors, re-anchored, which shows
how far training has moved the network from its initial gradient flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from gradsweep import theory
from gradsweep.config import branch_scale_value

MIN_BN_BATCH = 4  # the finite-batch BatchNorm rate needs E[1/chi^2_{B-1}] < inf


def predicted_factors(values: Mapping[str, Any], init_scale: float) -> np.ndarray:
    """Predicted preact factors (depth - 1 of them) of a run's network at `init_scale`.

    NaN where the theory has no finite prediction.
    """
    depth = int(values["depth"])
    if values["batchnorm"] and values["batch_size"] < MIN_BN_BATCH:
        return np.full(max(depth - 1, 0), np.nan)
    return theory.predict_preact_factors(
        values["act"],
        depth,
        values["width"],
        values["in_features"],
        values["out_features"],
        values["init"],
        float(init_scale),
        values["bias_init"],
        values["batchnorm"],
        values["batch_size"],
        values["output_act"],
        norm=values["norm"],
        residual=values["residual"],
        branch_scale=branch_scale_value(values["branch_scale"], depth),
        norm_position=values["norm_position"],
    )


def attach_predictions(frame: pd.DataFrame, values: Mapping[str, Any]) -> pd.DataFrame:
    """Add the prediction columns to a run's rows, each replica at the init_scale its rows carry."""
    depth = int(values["depth"])
    scales = frame.groupby("replica")["init_scale"].first().sort_index().tolist()
    replicas = len(scales)
    by_scale = {s: predicted_factors(values, s) for s in set(scales)}
    factors = np.full((replicas, depth), np.nan)
    back = np.full((replicas, depth), np.nan)
    for r, scale in enumerate(scales):
        factors[r, :-1] = by_scale[scale]
        back[r] = theory.predict_preact_norms(by_scale[scale], 1.0)

    preact = (frame["tensor"] == "preact").to_numpy()
    layer = frame["layer"].to_numpy()
    replica = frame["replica"].to_numpy()
    output = frame.loc[preact & (layer == depth - 1)]
    anchor = output.set_index(["step", "replica"])["grad_norm"]
    keys = pd.MultiIndex.from_arrays([frame["step"].to_numpy(), replica])
    anchored = anchor.reindex(keys).to_numpy(dtype=np.float64)

    rows = np.flatnonzero(preact)
    factor_col = np.full(len(frame), np.nan)
    norm_col = np.full(len(frame), np.nan)
    factor_col[rows] = factors[replica[rows], layer[rows]]
    norm_col[rows] = anchored[rows] * back[replica[rows], layer[rows]]
    return frame.assign(
        pred_preact_factor=pd.array(factor_col, dtype="Float64"),
        pred_preact_norm=pd.array(norm_col, dtype="Float64"),
    )
