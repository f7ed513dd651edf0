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


def prediction_columns(
    rows: Mapping[str, Any], values: Mapping[str, Any], scales: np.ndarray
) -> dict[str, pd.arrays.FloatingArray]:
    """The prediction columns of a run's rows, replica r at init_scale `scales[r]`.

    `rows` holds the rows' `replica`, `step`, `layer`, `tensor` and `grad_norm` columns.
    """
    depth = int(values["depth"])
    replicas = len(scales)
    by_scale = {s: predicted_factors(values, s) for s in set(scales.tolist())}
    factors = np.full((replicas, depth), np.nan)
    back = np.full((replicas, depth), np.nan)
    for r, scale in enumerate(scales.tolist()):
        factors[r, :-1] = by_scale[scale]
        back[r] = theory.predict_preact_norms(by_scale[scale], 1.0)

    preact = np.asarray(rows["tensor"] == "preact", dtype=bool)
    layer = np.asarray(rows["layer"])
    replica = np.asarray(rows["replica"])
    steps, step = np.unique(np.asarray(rows["step"]), return_inverse=True)
    output = preact & (layer == depth - 1)
    anchor = np.full((len(steps), replicas), np.nan)
    anchor[step[output], replica[output]] = np.asarray(rows["grad_norm"])[output]

    at = np.flatnonzero(preact)
    factor_col = np.full(len(preact), np.nan)
    norm_col = np.full(len(preact), np.nan)
    factor_col[at] = factors[replica[at], layer[at]]
    norm_col[at] = anchor[step[at], replica[at]] * back[replica[at], layer[at]]
    return {
        name: pd.arrays.FloatingArray(column, np.isnan(column))
        for name, column in (("pred_preact_factor", factor_col), ("pred_preact_norm", norm_col))
    }
