"""A run's tidy rows: parameter columns, divergence status."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import gradsweep.probe as probe_module
from gradsweep.config import RunConfig, run_values
from gradsweep.experiment import run_experiment
from gradsweep.model import ARCH_KEYS, build_mlp
from gradsweep.probe.native import load_kernel
from gradsweep.rows import divergence


@pytest.mark.parametrize("strategy", ["one_pass", "numpy_host", "fused_torch", "per_tensor"])
def test_parameter_columns_describe_parameters_and_are_null_on_preact_rows(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if strategy == "one_pass" and load_kernel() is None:
        pytest.skip("the one-pass kernel does not build here (no C compiler)")
    monkeypatch.setattr(probe_module, "ONE_PASS", strategy == "one_pass")
    monkeypatch.setattr(probe_module, "HOST_REDUCTIONS", strategy == "numpy_host")
    monkeypatch.setattr(
        probe_module, "FUSED_MAX_ELEMENTS", 0 if strategy == "per_tensor" else 1 << 16
    )
    cfg = {**run_values(RunConfig()), "batchnorm": True, "act": "relu", "dtype": "float64"}
    stats = run_experiment(cfg).stats
    preact = stats["tensor"] == "preact"
    assert stats.loc[preact, ["param_norm", "param_std"]].isna().all().all()
    net = build_mlp(**{k: cfg[k] for k in ARCH_KEYS}, seed=cfg["seed"]).double()
    params = {
        (index, name): tensor
        for index, layer in enumerate(m for m in net if isinstance(m, torch.nn.Linear))
        for name, tensor in (("weight", layer.weight), ("bias", layer.bias))
    }
    bns = [m for m in net if isinstance(m, torch.nn.BatchNorm1d)]
    params.update({(i, "bn_weight"): bn.weight for i, bn in enumerate(bns)})
    params.update({(i, "bn_bias"): bn.bias for i, bn in enumerate(bns)})
    assert len(stats[~preact]) == len(params)
    for row in stats[~preact].itertuples():
        p = params[(row.layer, row.tensor)].detach()
        assert row.param_norm == pytest.approx(p.norm().item(), rel=1e-12)
        assert row.param_std == pytest.approx(p.std(unbiased=False).item(), rel=1e-9, abs=1e-15)


def test_a_replica_diverges_at_its_first_non_finite_step() -> None:
    frame = pd.DataFrame(
        {
            "replica": [0, 0, 1, 1, 1, 2],
            "step": [0, 5, 0, 5, 10, 0],
            "grad_n_nan": [0, 0, 0, 2, 0, 0],
            "grad_n_inf": [0, 0, 0, 0, 1, 0],
            "grad_norm": [1.0, 1.0, 1.0, 1.0, 1.0, float("inf")],
            "loss": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        }
    )
    assert divergence(frame, 4) == (["ok", "diverged", "diverged", "ok"], [None, 5, 0, None])
