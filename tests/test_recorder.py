"""gradsweep.Recorder: the sweep's statistics of any nn.Module, from the user's own loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsweep
from gradsweep import store
from gradsweep.experiment import DATA_CHUNK
from gradsweep.probe import GradientProbe, TensorSpec
from gradsweep.recorder import Recorder
from gradsweep.rows import LOSS, statistic_columns

STATS = ["grad_norm", "grad_mean", "grad_std", "grad_min", "grad_max", "grad_frac_zero"]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class Block(nn.Module):
    """A pre-norm transformer block over an embedding."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.out = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        a = self.norm(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        return self.out(h + self.mlp(h))


def train(model: nn.Module, recorder: Recorder, batches, steps: int, loss_fn) -> list[float]:
    """A plain loop with the recorder's one line in it; the losses it saw."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for step in range(steps):
        x, y = batches(step)
        loss = loss_fn(model(x), y)
        loss.backward()
        recorder.step(step, loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def images(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)


def tokens(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    x = torch.randint(0, 50, (4, 6), generator=gen)
    return x, x.roll(1, dims=1)


def token_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module, list[float]]:
    torch.manual_seed(0)
    model = SmallCNN()
    out = tmp_path_factory.mktemp("cnn") / "cnn_run"
    with Recorder(model, out, watch_outputs=(nn.Linear, nn.Conv2d), log_every=2) as recorder:
        losses = train(model, recorder, images, 5, nn.functional.cross_entropy)
    return recorder.path, model, losses


def test_a_cnn_records_every_parameter_under_its_module_and_name(cnn_file) -> None:
    path, model, losses = cnn_file
    frame = gradsweep.load(path)
    step0 = frame[frame["step"] == 0]
    params = {(m, t) for m, t in zip(step0["module"], step0["tensor"]) if t != "output"}
    expected = {tuple(n.rsplit(".", 1)) for n, _ in model.named_parameters()}
    assert params == expected  # Conv2d, BatchNorm2d and Linear, each parameter by its name
    mlp_only = ["act", "depth", "batchnorm", "norm", "residual", "branch_scale", "norm_position"]
    assert frame[mlp_only].isna().all().all(), "a recording has no MLP configuration"
    outputs = step0[step0["tensor"] == "output"]
    assert outputs["module"].tolist() == ["features.0", "head"]
    assert (
        outputs["param_norm"].isna().all()
        and step0.loc[step0["tensor"] != "output"]["param_norm"].notna().all()
    )
    assert outputs["numel"].tolist() == [8 * 8 * 8 * 8, 8 * 10]
    # layer: the module's order among the recorded modules
    assert step0.groupby("module")["layer"].first().to_dict() == {
        "features.0": 0,
        "features.1": 1,
        "head": 2,
    }
    assert sorted(frame["step"].unique()) == [0, 2, 4]  # log_every=2
    assert frame.groupby("step")["loss"].first().tolist() == pytest.approx(losses[::2])
    assert (frame["source"] == "recorder").all() and frame["act"].isna().all()
    assert (frame["status"] == "ok").all() and frame["device"].eq("cpu").all()


def test_the_cnn_numbers_are_those_of_its_gradients(cnn_file) -> None:
    path, model, _ = cnn_file
    torch.manual_seed(0)
    fresh = SmallCNN()
    x, y = images(0)
    logits = fresh(x)
    logits.retain_grad()
    nn.functional.cross_entropy(logits, y).backward()
    frame = gradsweep.load(path, steps=0)
    output = frame[(frame["module"] == "head") & (frame["tensor"] == "output")].iloc[0]
    assert output["grad_norm"] == pytest.approx(logits.grad.double().norm().item(), rel=1e-6)
    assert output["grad_mean"] == pytest.approx(0.0, abs=1e-9)  # softmax minus one-hot rows
    row = frame[(frame["module"] == "features.1") & (frame["tensor"] == "weight")].iloc[0]
    grad = fresh.features[1].weight.grad.double()
    assert row["grad_norm"] == pytest.approx(grad.norm().item(), rel=1e-6)
    assert row["grad_max"] == pytest.approx(grad.max().item(), rel=1e-6)
    assert row["param_norm"] == pytest.approx(fresh.features[1].weight.double().norm().item())


def test_hooks_leave_the_forward_unchanged_and_are_removed_on_close(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = SmallCNN()
    x, _ = images(0)
    before = model(x)
    recorder = Recorder(model, tmp_path / "r", watch_outputs=nn.Module)
    with_hooks = model(x)
    assert torch.equal(before, with_hooks)
    with_hooks.sum().backward()
    recorder.step(0, with_hooks.sum())
    recorder.close()
    assert all(not m._forward_hooks for m in model.modules())


def test_a_transformer_block_records_layernorm_attention_and_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Block()
    with Recorder(model, tmp_path / "block", watch_outputs=("attn", nn.Linear)) as recorder:
        train(model, recorder, tokens, 2, token_loss)
    frame = gradsweep.load(recorder.path)
    pairs = set(zip(frame["module"], frame["tensor"]))
    for name, _ in model.named_parameters():
        assert tuple(name.rsplit(".", 1)) in pairs, name
    assert ("attn", "in_proj_weight") in pairs and ("embed", "weight") in pairs
    assert ("attn", "output") in pairs and ("attn.out_proj", "output") not in pairs
    assert ("mlp.0", "output") in pairs and ("norm", "output") not in pairs
    assert frame["grad_norm"].gt(0).all()


def test_the_recorder_equals_a_sweep_run_file_of_the_same_configuration(tmp_path: Path) -> None:
    """build_mlp in a plain loop against the sweep's stacked network, float64.

    Equal to float rounding, not bit for bit: the sweep multiplies stacked, transposed weights
    with batched matmuls, nn.Linear with addmm, so the gradients themselves differ in their last
    bits (measured: relative 1e-13 at most); counts and histograms are exact.
    """
    config = dict(act="tanh", steps=3, dtype="float64", lr=0.1, hist_every=2)
    sweep = gradsweep.load(gradsweep.run(tmp_path / "sweep", **config), histograms=True)
    model = gradsweep.build_mlp(act="tanh", seed=42).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)  # the sweep's first chunk of batches (data_seed 0)
    inputs = torch.randn(DATA_CHUNK, 32, 10, generator=gen, dtype=torch.float64)
    with Recorder(model, tmp_path / "rec", watch_outputs=nn.Linear, hist_every=2) as recorder:
        for step in range(4):
            loss = model(inputs[step]).mean()
            loss.backward()
            recorder.step(step, loss)
            if step < 3:
                optimizer.step()
            optimizer.zero_grad()
    recorded = gradsweep.load(recorder.path, histograms=True)
    recorded["tensor"] = recorded["tensor"].replace({"output": "preact"})
    key = ["step", "layer", "tensor"]
    a = sweep.sort_values(key, ignore_index=True)
    b = recorded.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    for column in [*STATS, "param_norm", "param_std", "loss", "total_grad_norm"]:
        np.testing.assert_allclose(b[column], a[column], rtol=1e-10, atol=1e-15, err_msg=column)
    for column in ["numel", "grad_n_nan", "grad_n_inf"]:
        assert b[column].tolist() == a[column].tolist()
    assert [h is None for h in a["grad_hist"]] == [h is None for h in b["grad_hist"]]
    for hist_a, hist_b in zip(a["grad_hist"], b["grad_hist"]):
        if hist_a is not None:
            assert np.array_equal(hist_a, hist_b)
    assert b["module"].tolist() == [str(2 * layer) for layer in b["layer"]]


def test_the_same_tensors_give_the_probes_numbers_exactly(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(7, 6)
    loss = model(x).square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    recorder = Recorder(model, tmp_path / "r")
    recorder.step(0, loss)
    frame = store.read_run(recorder.close())
    names = [("0", "weight"), ("0", "bias"), ("2", "weight"), ("2", "bias")]
    specs = [
        TensorSpec(i // 2, n, p.numel(), True) for i, ((_, n), p) in enumerate(zip(names, params))
    ]
    probe = GradientProbe(specs, 1, torch.device("cpu"), torch.float32)
    packed = torch.cat([probe.measure(grads, params, True), loss.detach().double().reshape(1)])
    probe.repair_nonfinite(packed.numpy(), grads, params)
    expected = statistic_columns([(0, True, packed.numpy())], probe.layout.with_tail(LOSS))
    for column in [*STATS, "param_norm", "param_std", "loss", "total_grad_norm"]:
        assert frame[column].tolist() == list(expected[column]), column


def test_non_finite_gradients_are_counted_and_mark_the_run_diverged(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    with Recorder(model, tmp_path / "r") as recorder:
        for step in range(2):
            loss = model(torch.ones(2, 3)).sum()
            loss.backward()
            if step == 1:
                model[0].weight.grad[0, :2] = float("nan")
                model[0].weight.grad[1, 0] = float("inf")
            recorder.step(step, loss)
            model.zero_grad()
    frame = gradsweep.load(recorder.path)
    bad = frame[(frame["step"] == 1) & (frame["module"] == "0") & (frame["tensor"] == "weight")]
    assert bad[["grad_n_nan", "grad_n_inf"]].values.tolist() == [[2, 1]]
    assert (frame["status"] == "diverged").all() and (frame["diverged_step"] == 1).all()
    assert store.read_metadata(recorder.path)["status"] == "diverged"


def test_nothing_is_written_before_close_nor_after_an_error(tmp_path: Path) -> None:
    model = nn.Linear(2, 1)
    recorder = Recorder(model, tmp_path / "r")
    loss = model(torch.ones(1, 2)).sum()
    loss.backward()
    recorder.step(0, loss)
    assert not recorder.path.exists()
    assert recorder.close() == recorder.path and store.is_complete(recorder.path)
    assert sorted(p.name for p in recorder.path.parent.iterdir()) == [store.STATS_FILE]
    with pytest.raises(KeyError):
        with Recorder(model, tmp_path / "failed") as failing:
            model(torch.ones(1, 2)).sum().backward()
            failing.step(0, 1.0)
            raise KeyError("training failed")
    assert not (tmp_path / "failed").exists()


def test_the_run_file_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    model = nn.Linear(2, 1)
    recorder = Recorder(model, tmp_path / "r")
    model(torch.ones(1, 2)).sum().backward()
    recorder.step(0, 0.5)

    def crash(table, handle, **kwargs):
        handle.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        recorder.close()
    assert list((tmp_path / "r").iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"log_every": 0}, "log_every=0 is invalid"),
        ({"hist_every": "2"}, "hist_every='2' is invalid"),
        ({"watch_outputs": "decoder"}, "names 'decoder', which is no module of the model"),
        ({"watch_outputs": (nn.Conv2d, nn.LSTM)}, "Conv2d, LSTM: the model has no module of"),
        ({"watch_outputs": [3]}, "give nn.Module types or qualified module names"),
        ({"config": {"when": object()}}, "cannot be written into the run file's footer"),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Recorder(nn.Linear(2, 1), tmp_path / "r", **kwargs)


def test_a_model_without_parameters_or_a_step_without_gradients_is_an_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="ReLU has no parameters that require a gradient"):
        Recorder(nn.ReLU(), tmp_path / "r")
    recorder = Recorder(nn.Linear(2, 1), tmp_path / "r")
    with pytest.raises(RuntimeError, match=r"step\(0\) found no gradient"):
        recorder.step(0, 1.0)
    with pytest.raises(ValueError, match="loss must be one number"):
        recorder.step(0, torch.ones(3))
