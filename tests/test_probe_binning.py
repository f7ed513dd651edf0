"""Histogram counting in torch."""

from __future__ import annotations

import torch

from gradsweep.probe.binning import bin_counts


def test_bin_counts_without_bincount_equal_bincount() -> None:
    """The index_add_ counting that CUDA uses (bincount syncs there) gives bincount's counts."""
    index = torch.randint(0, 50, (10_000,))
    assert torch.equal(bin_counts(index, 60, add=True), torch.bincount(index, minlength=60))
    assert torch.equal(bin_counts(index, 60, add=False), torch.bincount(index, minlength=60))
