"""What every PPO script must keep, checked on each `ppo_ddp*.py` in the repository (a copy named so is
checked too): its own loop on 2 ranks equals a plain one-process PPO written in the tests, both ranks stop
together at an update boundary when one is signalled and a resume continues bit-identically, the ranks' envs
never overlap, the ranks' state is compared and a difference stops the run, bf16 reaches both the rollout and
the update, and --bench-env times the env. Each case is as small as it can be and still fail when its claim
breaks (docs/correctness.md). PPO_DDP_TEST_FLAGS adds flags to every run (a change of yours, switched on).
"""

import importlib
import os
import shlex

import pytest
import torch
import tyro
from equivalence import ENT_COEF, LR, load, reference_run
from helpers import ROOT, explain, progress, python, run, torchrun, torchrun_cmd, weights

SCRIPTS = sorted(p.name for p in ROOT.glob("ppo_ddp*.py"))
VARIANTS = {"ppo_ddp.py": [["--agent=lstm"]]}  # agents of another kind in the same script: memory
CASES = [(s, flags) for s in SCRIPTS for flags in [[], *VARIANTS.get(s, [])]]
IDS = [" ".join([s.removesuffix(".py"), *f]).replace("--agent=", "") for s, f in CASES]
WORKER = "tests/support/equivalence_worker.py"
EXTRA = shlex.split(os.environ.get("PPO_DDP_TEST_FLAGS", ""))
IDENTICAL = "parameters identical on all 2 ranks after {} updates"


def small(script: str, envs: int = 0) -> list[str]:
    """The smallest run of a script that still trains: 16 envs stepped on the device (4 on the CPU), 8 steps,
    2 minibatches, and the hidden width of 16 where the script has one; no evaluation or console table."""
    mod = importlib.import_module(script.removesuffix(".py"))
    envs = envs or (4 if mod.Env.steps_on == "cpu" else 16)
    flags = [f"--num-envs={envs}", "--num-steps=8", "--num-minibatches=2", "--eval-interval=0"]
    flags += ["--print-interval=1000", "--dist-timeout=60", "--checkpoint-interval=0"]
    hidden = ["--hidden-size=16"] if "hidden_size" in mod.Args.__dataclass_fields__ else []
    return [*flags, *hidden, *EXTRA]


def global_batch(script: str) -> int:
    sizes = dict(f.lstrip("-").split("=") for f in small(script)[:2])
    return int(sizes["num-envs"]) * int(sizes["num-steps"]) * 2


@pytest.mark.parametrize("script, flags", CASES, ids=IDS)
def test_two_ranks_equal_one_process(tmp_path, script, flags):
    """Two updates of the script's own loop on 2 ranks (a scripted env: tests/support/equivalence_worker.py)
    end with the weights of the tests' plain PPO on both ranks' rollouts in one process: global minibatches,
    advantages normalized over them, gradients averaged (SGD, no clipping: a sum would double every step), the
    second rollout bootstrapped and (with memory) replayed from where the first one left off, the logged
    losses the means over every minibatch of both ranks. Then again with a target KL between the ranks' own
    KLs after the first epoch (once per script): the run stops where the mean KL of both ranks says, where a
    rank deciding on its own KL would stop at another epoch."""
    mod = importlib.import_module(script.removesuffix(".py"))
    schedules = [k.replace("_", "-") for k in mod.Args.__dataclass_fields__ if k.endswith("_schedule")]
    args = [*small(script, envs=8), *flags, *(f"--{k}=constant" for k in schedules), "--update-epochs=4"]
    args += [
        f"--learning-rate={LR}",
        f"--ent-coef={ENT_COEF}",
        "--max-grad-norm=1e6",
        "--total-timesteps=256",
    ]
    parsed = tyro.cli(mod.Args, args=args)  # 2 updates of 8 envs x 8 steps x 2 ranks
    target = None
    for case in ("plain", "kl") if not flags else ("plain",):  # a variant shares the script's KL stop
        out = tmp_path / case
        out.mkdir()
        kl = [] if target is None else [f"--target-kl={target}"]
        p = run(torchrun_cmd(WORKER, script, str(out), *args, *kl, "--run-name=e"), 120, cwd=out)
        assert p.returncode == 0, explain(p)
        records = load(out)
        assert all(r["autocast"] == {"rollout": {False}, "update": {False}} for r in records)  # fp32
        ref = reference_run(script, records, parsed, 2, target)
        model = weights(out / "runs/e/final_model.pt")
        for k, v in ref["model"].items():
            torch.testing.assert_close(model[k], v, rtol=1e-4, atol=1e-6, msg=f"{case}: {k} differs")
        for row, update in zip(progress(out / "runs/e"), ref["updates"], strict=True):
            assert update["recorded_steps"] == update["steps"], (case, update)
            logged = {k: float(row[k]) for k in update["stats"]}
            assert logged == pytest.approx(update["stats"], rel=1e-4, abs=1e-6), case
        first = ref["updates"][0]["half_kls"][0]
        if case == "plain" and not flags:
            assert max(first) > 1.2 * min(first), first  # the ranks disagree enough for a target between them
            target = (sum(first) / 2 + max(first)) / 2
    assert flags or 2 < ref["updates"][0]["steps"] < 8  # past the first epoch, stopped before the last


@pytest.mark.parametrize("script, flags", CASES, ids=IDS)
@pytest.mark.slow
def test_a_signal_stops_every_rank_together_and_the_resume_is_exact(tmp_path, script, flags):
    """Rank 1 alone gets SIGUSR1 during update 2: both ranks finish that update, checkpoint it and stop (exit
    75, said once); the checkpoint holds each rank's own envs, no global env id on two ranks; --resume then
    ends with the weights and progress.csv of a run that was never stopped: model, optimizer, schedule, RNG,
    envs and the agent's memory all come back."""
    args = [*small(script), *flags, f"--total-timesteps={3 * global_batch(script)}"]
    full = torchrun(script, *args, "--run-name=full", cwd=tmp_path, timeout=120)
    assert full.returncode == 0 and IDENTICAL.format(3) in full.stdout, explain(full)
    args.append("--run-name=r")
    p = torchrun(script, *args, cwd=tmp_path, timeout=120, PPO_DDP_FAULT="signal:1:2")
    stopped = p.stdout.count("stopped by SIGUSR1 (1 of 2 ranks) at update 2")
    assert p.returncode != 0 and stopped == 1 and "exitcode: 75" in p.stderr, explain(p)
    ckpt = torch.load(tmp_path / "runs/r/checkpoints/update_00000002.pt", weights_only=False)
    ids = [torch.as_tensor(part["env_ids"]).tolist() for part in ckpt["ranks"]]
    assert len(ids[0]) == len(ids[1]) and sorted(ids[0] + ids[1]) == list(range(2 * len(ids[0]))), ids
    p = torchrun(script, *args, "--resume", cwd=tmp_path, timeout=120)
    resumed = "resumed from runs/r/checkpoints/update_00000002.pt at update 2"
    assert p.returncode == 0 and resumed in p.stdout and IDENTICAL.format(3) in p.stdout, explain(p)
    wa, wb = weights(tmp_path / "runs/full/final_model.pt"), weights(tmp_path / "runs/r/final_model.pt")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    clock = {"charts/SPS", "time/rollout_s", "time/update_s"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in clock} for r in rows]  # noqa: E731
    assert strip(progress(tmp_path / "runs/r")) == strip(progress(tmp_path / "runs/full"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_ranks_whose_state_differs_are_stopped(tmp_path, script):
    """Rank 1 nudges one weight after its first optimizer step (injected from outside): the comparison of
    every rank's shared state with rank 0's stops both ranks with one line naming what differs (exit 1)."""
    args = [*small(script), f"--total-timesteps={global_batch(script)}"]
    p = torchrun(script, *args, cwd=tmp_path, timeout=120, PPO_DDP_FAULT="diverge:1")
    differs = p.stderr.count("the state differs across ranks at the end")
    assert p.returncode != 0 and differs == 2 and "(agent." in p.stderr, explain(p)
    assert p.stderr.count("training stopped on every rank") == 2, explain(p)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bf16_runs_the_rollout_and_the_update_under_autocast(tmp_path, script):
    """--precision bf16 reaches every forward of the rollout and of the update (recorded from outside, one
    process; the equivalence test's fp32 runs record none)."""
    flags = [*small(script), f"--total-timesteps={global_batch(script) // 2}", "--precision=bf16"]
    p = python(WORKER, script, str(tmp_path), *flags, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, explain(p)
    (record,) = load(tmp_path, world_size=1)
    assert record["autocast"] == {"rollout": {True}, "update": {True}}, record["autocast"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_env_times_the_env_with_random_valid_actions(script):
    """--bench-env resets the envs and steps them with the `random` baseline's actions: steps/s, one line."""
    p = python(script, "--bench-env", "--num-envs=2", *EXTRA, timeout=60)
    assert p.returncode == 0 and p.stdout.strip().endswith("steps/s"), explain(p)
    assert float(p.stdout.split(":")[-1].split()[0].replace(",", "")) > 0, p.stdout
