"""Each logged step's packed result on its way to the host, without a sync in the step loop."""

from __future__ import annotations

import numpy as np
import torch


class HostCopies:
    """Packed results gathered on the host, in order.

    CPU results are host memory already and are kept as they are. Device
    results (or CPU ones with `batched`, which tests use) are gathered
    FLUSH_EVERY at a time into one host buffer, pinned on CUDA, by an
    asynchronous copy; `arrays` waits for the device once, after the loop.
    """

    FLUSH_EVERY = 256

    def __init__(self, device: torch.device, batched: bool | None = None) -> None:
        self.device = device
        self.batched = device.type != "cpu" if batched is None else batched
        self._pending: list[torch.Tensor] = []
        self._copies: list[tuple[torch.Tensor, list[int]]] = []

    def add(self, packed: torch.Tensor) -> None:
        self._pending.append(packed)
        if self.batched and len(self._pending) >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        sizes = [t.numel() for t in self._pending]
        host = torch.empty(sum(sizes), dtype=torch.float64, pin_memory=self.device.type == "cuda")
        host.copy_(torch.cat(self._pending), non_blocking=True)
        self._copies.append((host, sizes))
        self._pending = []

    def arrays(self) -> list[np.ndarray]:
        """Host arrays of every added result, in order."""
        if not self.batched:
            return [t.numpy() for t in self._pending]
        self._flush()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return [part.numpy() for host, sizes in self._copies for part in torch.split(host, sizes)]
