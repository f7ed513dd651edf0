"""Seed replicas and replica groups equal separate runs; group planning; progress output."""

from __future__ import annotations

import io

import pytest
from conftest import assert_stats_close
from omegaconf import OmegaConf

from gradsweep.config import AppConfig, run_key
from gradsweep.experiment import GradientFlowRun
from gradsweep.group_plan import JobPlan, member_config, member_overrides, plan_groups
from gradsweep.groups import ReplicaGroupRun
from gradsweep.progress import ProgressBar, parse_position, run_line

CASES = [
    dict(act="sigmoid", optimizer="sgd"),
    dict(act="relu", batchnorm=True, clip=0.5, optimizer="sgd", momentum=0.9),
    dict(act="tanh", batchnorm=True, clip=1.0, optimizer="adam", lr=0.01),
    dict(
        act="relu",
        output_act=False,
        loss="mse",
        clip=0.05,
        optimizer="adam",
        init="normal",
        init_scale=3.0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_replicas_equal_separate_runs(case):
    k, seed = 3, 11
    stacked = GradientFlowRun(dict(case, replicas=k, seed=seed, steps=6, depth=4)).run().stats
    if case.get("clip"):
        clipped = stacked[stacked["tensor"] == "weight"]
        assert (clipped["grad_norm_clipped"] < clipped["grad_norm"] - 1e-9).any()
    for r in range(k):
        alone = GradientFlowRun(dict(case, replicas=1, seed=seed + r, steps=6, depth=4)).run().stats
        mine = stacked[stacked["replica"] == r].reset_index(drop=True).assign(replica=0)
        assert (mine["seed"] == seed + r).all()
        assert_stats_close(mine.drop(columns="run_key"), alone.drop(columns="run_key"))


def test_replica_group_writes_what_each_separate_run_writes():
    base = dict(
        act="relu", batchnorm=True, clip=0.5, optimizer="adam", steps=5, depth=4, replicas=2
    )
    configs = [dict(base, seed=s, init_scale=scale) for s, scale in [(1, 1.0), (9, 2.0), (4, 0.5)]]
    results = ReplicaGroupRun(configs).run_members()
    for cfg, result in zip(configs, results):
        alone = GradientFlowRun(cfg).run()
        assert (result.stats["run_key"] == run_key(cfg)).all()
        assert result.status == alone.status and result.diverged_step == alone.diverged_step
        assert (result.stats.dtypes == alone.stats.dtypes).all()
        assert_stats_close(result.stats, alone.stats)


def test_replica_group_rejects_members_that_differ_in_architecture():
    with pytest.raises(ValueError, match="differ in \\['depth'\\]"):
        ReplicaGroupRun([dict(seed=1), dict(seed=2, depth=7)])


def test_plan_groups_packs_only_seed_and_init_scale():
    jobs = [
        [f"act={a}", f"seed={s}", f"init_scale={x}"]
        for a in ("relu", "tanh")
        for s in (1, 2)
        for x in (1, 2)
    ]
    assert plan_groups(jobs, 1) == [JobPlan(job, []) for job in jobs]
    plans = plan_groups(jobs, 3)
    assert [p.n_runs for p in plans] == [3, 1, 3, 1]
    assert plans[0] == JobPlan(
        ["act=relu", "seed=1", "init_scale=1"],
        [["seed=1", "init_scale=2"], ["seed=2", "init_scale=1"]],
    )
    assert plans[2].overrides[0] == "act=tanh"


def test_member_config_and_overrides_follow_the_schema():
    cfg = OmegaConf.merge(OmegaConf.structured(AppConfig), {"act": "tanh", "seed": 1})
    member = member_config(cfg, ["seed=5", "init_scale=2"])
    assert (member.seed, member.init_scale, member.act.value) == (5, 2.0, "tanh")
    assert isinstance(member.init_scale, float) and cfg.seed == 1
    assert member_overrides(["act=tanh", "seed=1"], ["seed=5", "init_scale=2"]) == [
        "act=tanh",
        "seed=5",
        "init_scale=2",
    ]
    with pytest.raises(ValueError, match="depth"):
        member_config(cfg, ["depth=3"])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_silent_off_a_terminal_and_drawn_on_one():
    quiet = io.StringIO()
    bar = ProgressBar(10, "run", stream=quiet)
    for i in range(1, 11):
        bar(i)
    bar.close()
    assert quiet.getvalue() == ""
    tty = _Terminal()
    bar = ProgressBar(10, "run", stream=tty)
    bar(10)
    bar.close()
    assert (
        "run [##############################] 10/10" in tty.getvalue()
        and tty.getvalue().endswith("\r\033[K")
    )


def test_progress_bar_follows_a_run():
    tty = _Terminal()
    GradientFlowRun(dict(steps=3)).run(ProgressBar(4, "r", stream=tty))
    assert "4/4" in tty.getvalue()


def test_run_line_and_position():
    assert (
        run_line(3, 120, ["act=relu", "seed=2"], 0.5, "ok")
        == "[  3/120] act=relu seed=2  0.50s  ok"
    )
    assert run_line(1, 1, [], 1.0, "diverged") == "[1/1] (defaults)  1.00s  diverged"
    assert parse_position("5/200") == (5, 200) and parse_position("") is None
