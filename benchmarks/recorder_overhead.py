"""Cost of gradsweep.Recorder against a plain training loop and against wandb.watch, side by side.

A small CNN and a small transformer block train on synthetic data in one process.
Each way of training has its own copy of the model (same init, same batches), so
one way's hooks never run in another's blocks; the ways alternate in blocks and the
median seconds per step of each is compared with the plain loop's:

- plain: forward, backward, optimizer step;
- Recorder, every statistic and a histogram at every step, of every parameter gradient
  (the tensors wandb.watch records), and the same with dL/d(output) of every Linear
  and Conv2d watched too;
- Recorder, every statistic at every step, no histograms (scalars only);
- Recorder, log_every=10 (statistics and histograms every 10th step);
- wandb.watch(model, log="gradients", log_freq=1) in offline mode (no account), with
  wandb.log of the loss each step so that its histograms are committed.

    pip install -e ".[bench]"
    python benchmarks/recorder_overhead.py [--repeats 9] [--steps 20] [--threads 1]

Prints one markdown table, ready for docs/performance.md: ms per step, the ratio to
the plain step, and whether the Recorder's overhead at every statistic every step is
at most half of wandb.watch's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gradsweep import Recorder

BATCH = 32


class SmallCNN(nn.Module):
    """Two conv blocks with BatchNorm and a linear head, 3x32x32 images, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class TransformerBlock(nn.Module):
    """Token embedding, one pre-norm transformer block (attention and MLP), a vocabulary head."""

    def __init__(self, vocab: int = 256, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        a = self.norm1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return self.head(h)


def cnn_data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(BATCH, 3, 32, 32, generator=gen),
            torch.randint(0, 10, (BATCH,), generator=gen),
        )
        for _ in range(n)
    ]


def token_data(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randint(0, 256, (BATCH // 2, 32), generator=gen)
        out.append((x, x.roll(-1, dims=1)))
    return out


def cnn_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def token_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())


MODELS = {
    "small CNN": (SmallCNN, cnn_data, cnn_loss),
    "transformer block": (TransformerBlock, token_data, token_loss),
}
WAYS = (
    "plain",
    "Recorder: all statistics + histogram every step",
    "Recorder: the same + dL/d(output) of every Linear and Conv2d",
    "Recorder: scalars every step",
    "Recorder: log_every=10",
    'wandb.watch(log="gradients", log_freq=1)',
)
# The Recorder way set against wandb.watch, which records the same tensors (parameter gradients).
TARGET_WAY, WANDB_WAY = WAYS[1], WAYS[-1]
RECORDER_WAYS = {  # keyword arguments of each Recorder way
    WAYS[1]: {},
    WAYS[2]: {"watch_outputs": (nn.Linear, nn.Conv2d)},
    WAYS[3]: {"hist_every": 10**9},
    WAYS[4]: {"log_every": 10},
}


class Way:
    """One way of training: its own model copy, optimizer and per-step instrumentation."""

    def __init__(self, name: str, make: Callable[[], nn.Module], loss_fn, out: Path) -> None:
        torch.manual_seed(0)
        self.name = name
        self.model = make()
        self.loss_fn = loss_fn
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.step_index = 0
        self.recorder: Recorder | None = None
        self.wandb = None
        if name in RECORDER_WAYS:
            self.recorder = Recorder(
                self.model, out / f"way{WAYS.index(name)}", **RECORDER_WAYS[name]
            )
        elif name == WANDB_WAY:
            import wandb

            # wandb.watch's hooks log into the global wandb.run: one run at a time
            self.wandb = wandb.init(project="gradsweep-bench", mode="offline", dir=str(out))
            self.wandb.watch(self.model, log="gradients", log_freq=1)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, y = batch
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        if self.recorder is not None:
            self.recorder.step(self.step_index, loss)
        if self.wandb is not None:
            self.wandb.log({"loss": loss.item()})
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_index += 1

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
        if self.wandb is not None:
            self.wandb.finish()


def block_seconds(way: Way, batches, n_steps: int) -> float:
    start = time.perf_counter()
    for i in range(n_steps):
        way.step(batches[i % len(batches)])
    return (time.perf_counter() - start) / n_steps


def measure(model: str, repeats: int, n_steps: int, out: Path) -> dict[str, float]:
    """Median seconds per step of each way, blocks alternating."""
    make, data, loss_fn = MODELS[model]
    batches = data(8)
    ways = [Way(name, make, loss_fn, out / model.replace(" ", "_")) for name in WAYS]
    for way in ways:
        block_seconds(way, batches, max(3, n_steps // 4))
    times: dict[str, list[float]] = {w.name: [] for w in ways}
    for _ in range(repeats):
        for way in ways:
            times[way.name].append(block_seconds(way, batches, n_steps))
    for way in ways:
        way.close()
    return {name: statistics.median(t) for name, t in times.items()}


def table(results: dict[str, dict[str, float]]) -> str:
    """The markdown table: ms per step and ratio to plain, per model and way; the target check."""
    lines = [
        "| model | way | ms per step | ratio to plain |",
        "| --- | --- | --- | --- |",
    ]
    verdicts = []
    for model, medians in results.items():
        plain = medians["plain"]
        for name, seconds in medians.items():
            lines.append(f"| {model} | {name} | {seconds * 1e3:.2f} | {seconds / plain:.2f} |")
        recorder = medians[TARGET_WAY] - plain
        wandb = medians[WANDB_WAY] - plain
        met = recorder <= 0.5 * wandb
        verdicts.append(
            f"- {model}: Recorder overhead (all statistics + histogram every step, parameters "
            "as wandb.watch) "
            f"{recorder / plain:.0%} of a plain step, wandb.watch {wandb / plain:.0%}: "
            f"{'at most' if met else 'MORE than'} half (target {'met' if met else 'missed'})."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="blocks per way (median taken)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per block")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(args.threads)
    import wandb

    with tempfile.TemporaryDirectory(prefix="recorder-bench-") as tmp:
        results = {model: measure(model, args.repeats, args.steps, Path(tmp)) for model in MODELS}
    print(
        f"torch {torch.__version__}, wandb {wandb.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"median of {args.repeats} blocks of {args.steps} steps, ways alternating\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
