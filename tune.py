"""Hyperparameter search over a PPO script with Optuna: each trial a torchrun job of the script, the study
a database.

  python tune.py --script ppo_ddp.py --trials 40 --total-timesteps 10000000      # the Arena, into sqlite:///tune.db
  python tune.py --script ppo_ddp_snake.py --space learning-rate ent-coef=log:1e-3:1e-1
  python tune.py ... --storage postgresql://user@host/db                         # several machines, one study

The same command run again continues the study: it runs only the trials still missing, and a trial cut short
by Ctrl-C or a killed tuner continues from its checkpoint. Each trial's log, trials.csv, the chart and the
best command line go to runs/tune-<study>/; the trials' own runs to runs/tune-<study>-<trial>/.
"""

import csv
import ctypes
import functools
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import optuna
import tyro
from optuna.trial import TrialState

# heartbeats: there since 2.9
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

# -- the search space of each script: flag -> log:LOW:HIGH (log-uniform), float:LOW:HIGH, int:LOW:HIGH
#    or cat:A,B,...
# the scripts whose environments step in torch on the device: Snake as it is, the Arena plus shaping
VECTORIZED = {
    "learning-rate": "log:2e-4:3e-3",
    "num-steps": "cat:32,64,128",
    "num-minibatches": "cat:2,4,8",
    "update-epochs": "cat:1,2,4",
    "ent-coef": "log:1e-3:5e-2",
    "clip-coef": "cat:0.1,0.2,0.3",
    "gamma": "cat:0.98,0.99,0.995",
    "gae-lambda": "cat:0.9,0.95,0.98",
    "vf-coef": "cat:0.25,0.5,1.0",
}
SPACES = {
    "ppo_ddp.py": {**VECTORIZED, "reward-shaping": "cat:True,False"},
    "ppo_ddp_snake.py": VECTORIZED,
    "ppo_ddp_gym.py": {
        "learning-rate": "log:1e-4:3e-3",
        "num-steps": "cat:64,128,256",
        "num-minibatches": "cat:2,4,8",
        "update-epochs": "cat:2,4,8",
        "ent-coef": "log:1e-4:3e-2",
        "clip-coef": "cat:0.1,0.2,0.3",
        "gamma": "cat:0.98,0.99,0.995",
        "gae-lambda": "cat:0.9,0.95,0.98",
    },
}
METRICS = {
    "ppo_ddp.py": "arena/hearts",
    "ppo_ddp_snake.py": "snake/apples",
    "ppo_ddp_gym.py": "charts/episodic_return",
}
OWN_FLAGS = ("run-name", "seed", "total-timesteps", "resume")  # the tuner sets these for every trial
REPORTS = 20  # intermediate values at 5%, 10%, ... 100% of a trial's steps: the same steps in every trial
STOP_WAIT = 90.0  # seconds a stopped trial may take to checkpoint and leave before its processes are killed


@dataclass
class Args:
    script: str = "ppo_ddp.py"
    """the PPO script to tune (its space is SPACES[script], its metric METRICS[script])"""
    metric: str = ""
    """the progress.csv column to optimize (empty = the script's headline metric)"""
    direction: Literal["maximize", "minimize"] = "maximize"
    """whether a higher or a lower objective is better"""
    trials: int = 40
    """finished trials (completed or pruned) the study should hold; a rerun runs only the missing ones"""
    nproc_per_node: int = 2
    """processes of each trial's torchrun job (--standalone, this machine)"""
    total_timesteps: int = 10_000_000
    """environment steps of each trial (its schedules span them)"""
    seed: int = 1
    """the seed of every trial: trials differ in their flags only"""
    fixed: list[str] = field(default_factory=list)
    """flags of all trials, name=value: num-envs=64 eval-interval=0 reward-shaping=False (not in the space)"""
    space: list[str] = field(default_factory=list)
    """limit the space to these flags: a name keeps its range, name=SPEC sets it (log:1e-4:1e-2, cat:2,4,8)"""
    storage: str = "sqlite:///tune.db"
    """the study's database: any SQLAlchemy URL Optuna takes (SQLite, PostgreSQL, MySQL)"""
    study_name: str = ""
    """the study in the database (empty = the script's name without .py)"""
    sampler_seed: int = 0
    """seed of the TPE sampler"""
    pruner: Literal["median", "threshold", "none"] = "median"
    """median: stop a trial below the finished ones' median at that step; threshold: below --prune-below"""
    prune_startup: int = 5
    """trials the median pruner waits for before it stops any"""
    prune_warmup: float = 0.3
    """fraction of a trial's steps before the pruner may stop it"""
    prune_below: float = 0.0
    """the threshold pruner's bound (maximize: stop below it; minimize: above it)"""
    enqueue_defaults: bool = True
    """the first trial of a new study runs the script's defaults, the baseline of every other trial"""
    heartbeat: int = 30
    """seconds between a running trial's heartbeats; one silent for twice that (its tuner killed) is rerun"""
    max_failures: int = 5
    """failed trials in a row after which the tuner gives up (the study keeps them)"""
    poll: float = 1.0
    """seconds between reads of a running trial's progress.csv"""
    report_only: bool = False
    """write the study's report (table, importances, trials.csv, chart, best command) and run no trial"""


class TunerError(ValueError):
    """Bad tuner input: one line, exit code 2, before any trial starts."""


# ---------------------------------------------------------------------------------------------------
# The search space
# ---------------------------------------------------------------------------------------------------
def parse_value(text: str):
    """A value of a categorical: True/False, an int, a float, or the text itself."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(flag: str, spec: str) -> optuna.distributions.BaseDistribution:
    """log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or cat:A,B,... as an Optuna distribution."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "cat":
            choices = [parse_value(v) for v in rest.split(",") if v]
            if not choices:
                raise ValueError("no choices")
            return optuna.distributions.CategoricalDistribution(choices)
        low, high = rest.split(":")
        if kind == "int":
            return optuna.distributions.IntDistribution(int(low), int(high))
        if kind in ("log", "float"):
            return optuna.distributions.FloatDistribution(float(low), float(high), log=kind == "log")
    except ValueError as e:
        raise TunerError(f"--space {flag}={spec}: {e}") from None
    raise TunerError(f"--space {flag}={spec}: the kind must be log, float, int or cat")


def build_space(args: Args, fields: dict) -> dict:
    """The script's space restricted and overridden by --space, checked against the script's own flags."""
    default = SPACES.get(Path(args.script).name, {})
    chosen = {}
    for item in args.space or list(default):
        flag, _, spec = item.partition("=")
        if not spec and flag not in default:
            raise TunerError(
                f"--space {flag}: not in the space of {args.script}; give its range, {flag}=log:1e-4:1e-2"
            )
        chosen[flag] = spec or default[flag]
    if not chosen:
        raise TunerError(f"{args.script} has no search space here: give one with --space flag=SPEC ...")
    fixed = fixed_params(args, fields)
    for flag in chosen:
        if flag.replace("-", "_") not in fields:
            raise TunerError(f"--space {flag}: {args.script} has no flag --{flag}")
        if flag in OWN_FLAGS or flag in fixed:
            raise TunerError(f"--space {flag}: set by {'the tuner' if flag in OWN_FLAGS else '--fixed'}")
    return {flag: parse_spec(flag, spec) for flag, spec in chosen.items()}


def fixed_params(args: Args, fields: dict | None = None) -> dict:
    """--fixed name=value ... as {flag: value}, checked against the script's flags when they are given."""
    fixed = {}
    for item in args.fixed:
        flag, eq, value = item.partition("=")
        if fields is not None and (not eq or flag.replace("-", "_") not in fields or flag in OWN_FLAGS):
            why = "not name=value" if not eq else "set by the tuner" if flag in OWN_FLAGS else "no such flag"
            raise TunerError(f"--fixed {item}: {why} ({args.script})")
        fixed[flag] = parse_value(value)
    return fixed


def to_flags(params: dict) -> list[str]:
    """Sampled values as the script's command-line flags (booleans as --flag / --no-flag)."""
    out = []
    for flag, v in params.items():
        out += [f"--{flag}" if v else f"--no-{flag}"] if isinstance(v, bool) else [f"--{flag}", str(v)]
    return out


@functools.cache
def script_info(script: str) -> dict:
    """The script's flags with their defaults and the progress.csv columns a study can optimize (the episode
    metrics, their evaluations, steps/s), read from the script itself."""
    code = (
        "import dataclasses, importlib.util, json, sys; sys.argv = [sys.argv[1]]\n"
        "spec = importlib.util.spec_from_file_location('script', sys.argv[0])\n"
        "m = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(m); a = m.Args()\n"
        "games = [*m.EPISODE_METRICS.values(), *('eval/' + k for k in m.EPISODE_METRICS)]\n"
        "print(json.dumps({'fields': {f.name: getattr(a, f.name) for f in dataclasses.fields(a)},"
        " 'metrics': [*games, 'charts/SPS']}, default=str))"
    )
    if not Path(script).is_file():
        raise TunerError(f"--script {script}: no such file")
    out = subprocess.run([sys.executable, "-c", code, script], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise TunerError(
            f"--script {script}: not a PPO script of this project ({out.stderr.strip().splitlines()[-1]})"
        )
    return json.loads(out.stdout)


def default_params(space: dict, fields: dict) -> dict:
    """The script's defaults for the flags of the space whose default lies in it (the baseline trial)."""
    params = {}
    for flag, dist in space.items():
        v = fields[flag.replace("-", "_")]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            if v in dist.choices:
                params[flag] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and dist.low <= v <= dist.high:
            params[flag] = v
    return params


# ---------------------------------------------------------------------------------------------------
# The objective, from a trial's progress.csv
# ---------------------------------------------------------------------------------------------------
def read_rows(run_dir: Path, metric: str) -> list[tuple[int, int, float | None]]:
    """(update, global_step, the metric or None where no episode ended) of every row of progress.csv."""
    path = run_dir / "progress.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        (int(r["update"]), int(r["global_step"]), float(r[metric]) if r.get(metric) else None) for r in rows
    ]


def objective(rows: list[tuple[int, int, float | None]], num_updates: int) -> float:
    """The metric's mean over the last 10% of the updates (at least one) up to the last row; NaN if none."""
    last = rows[-1][0] if rows else 0
    window = [v for u, _, v in rows if u > last - math.ceil(num_updates / 10) and v is not None]
    return sum(window) / len(window) if window else math.nan


def intermediate(rows: list[tuple[int, int, float | None]], total: int, num_updates: int) -> dict[int, float]:
    """The objective so far at each 1/REPORTS of the trial's steps already passed (step k: k/REPORTS)."""
    passed = [k for k in range(1, REPORTS + 1) if rows and rows[-1][1] >= total * k / REPORTS]
    return {k: objective([r for r in rows if r[1] <= total * k / REPORTS], num_updates) for k in passed}


# ---------------------------------------------------------------------------------------------------
# Trials: each a torchrun job
# ---------------------------------------------------------------------------------------------------
STOP = {"signal": 0}  # set by Ctrl-C or SIGTERM of the tuner: the running trial is stopped with a checkpoint


def request_stop(signum, frame) -> None:
    STOP["signal"] = signum


def die_with_parent() -> None:
    """In the child before exec: SIGTERM if the tuner dies, so a dead tuner's trial stops and checkpoints."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_job(proc: subprocess.Popen) -> int:
    """SIGTERM to torchrun, which passes it to every rank: they finish the update, checkpoint and exit 75."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(STOP_WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def wait_for_job(job: str) -> None:
    """Wait for a trial's earlier job (host:pid) to be gone before its run is continued, when it ran here."""
    host, _, pid = job.rpartition(":")
    while host == socket.gethostname() and Path(f"/proc/{pid}").exists():
        time.sleep(0.5)


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Requeue a stopped trial with its flags: it continues its run from the checkpoint, or starts over."""
    if any(t.user_attrs.get("retry_of") == trial.number for t in study.get_trials(deepcopy=False)):
        return  # another tuner of the study queued it already
    attrs = {"retry_of": trial.number, "resume_from": trial.user_attrs.get("run_name", "")}
    study.enqueue_trial(trial.params, user_attrs={**attrs, "job": trial.user_attrs.get("job", "")})


def run_trial(study: optuna.Study, args: Args, space: dict, metric: str, out_dir: Path) -> TrialState:
    """Ask for a trial, run its torchrun job while reporting to the pruner, tell the study how it ended."""
    trial = study.ask(space)
    study._storage.record_heartbeat(trial._trial_id)  # from now on a silent trial is known to be stale
    resume_from = trial.user_attrs.get("resume_from", "")
    if resume_from and not any((Path("runs") / resume_from / "checkpoints").glob("update_*.pt")):
        resume_from = ""  # it left no checkpoint: the run starts over under the trial's own name
    run_name = resume_from or f"tune-{study.study_name}-{trial.number:04d}"
    run_dir, log_path = Path("runs") / run_name, (out_dir / f"trial_{trial.number:04d}.log").resolve()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.nproc_per_node}",
    ]
    cmd += [
        args.script,
        "--run-name",
        run_name,
        "--seed",
        str(args.seed),
        "--total-timesteps",
        str(args.total_timesteps),
    ]
    cmd += to_flags(fixed_params(args)) + to_flags(trial.params) + (["--resume"] if resume_from else [])
    wait_for_job(trial.user_attrs.get("job", ""))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
        )
    for k, v in {"run_name": run_name, "log": str(log_path), "command": shlex.join(cmd)}.items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("job", f"{socket.gethostname()}:{proc.pid}")
    print(
        f"trial {trial.number}: {shlex.join(to_flags(trial.params))}"
        + (f" (continues {run_name})" * bool(resume_from))
    )

    reported, pruned, beat = {}, False, 0.0
    while proc.poll() is None:
        time.sleep(args.poll)
        if time.time() - beat > args.heartbeat / 2:
            study._storage.record_heartbeat(trial._trial_id)
            beat = time.time()
        if STOP["signal"]:
            break
        config = run_dir / "config.json"
        if not config.exists():
            continue
        num_updates = json.loads(config.read_text())["num_updates"]
        rows = read_rows(run_dir, metric)
        for k, v in intermediate(rows, args.total_timesteps, num_updates).items():
            if k not in reported and math.isfinite(v):
                trial.report(v, k)
                reported[k] = v
        if reported and trial.should_prune():
            pruned = True
            break
    code = stop_job(proc) if proc.poll() is None else proc.returncode
    trial.set_user_attr("exit_code", code)

    if STOP["signal"] and code != 0:  # (a job that finished as the stop came is a completed trial)
        study.tell(trial, state=TrialState.FAIL)
        retry(study, study.get_trials(deepcopy=False)[trial.number])
        print(
            f"trial {trial.number}: stopped by the tuner's {signal.Signals(STOP['signal']).name} "
            f"(exit code {code}): "
            "queued to continue from its checkpoint when the same command runs again"
        )
        return TrialState.FAIL
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        print(
            f"trial {trial.number}: pruned at {max(reported) * 100 // REPORTS}% of its steps "
            f"({reported[max(reported)]:.3f}); its job exited with {code}"
        )
        return TrialState.PRUNED
    config = run_dir / "config.json"
    num_updates = json.loads(config.read_text())["num_updates"] if config.exists() else 1
    value = objective(read_rows(run_dir, metric), num_updates)
    if code != 0 or not math.isfinite(value):
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        # the scripts' one-line errors, else a traceback's
        ours = [ln for ln in lines if ln.startswith("error:")]
        candidates = ours or [ln for ln in lines if "Error" in ln] or lines or ["no output"]
        error = candidates[-1 if not ours else 0]
        reason = (
            f"exit code {code}"
            if code
            else f"{metric} is {value} (not logged in the last 10%, or not finite)"
        )
        trial.set_user_attr("error", f"{reason}: {error.strip()}"[:500])
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number}: failed, {reason}; log {log_path}")
        return TrialState.FAIL
    study.tell(trial, value)
    print(f"trial {trial.number}: {metric} {value:.4f} (mean over the last 10% of {num_updates} updates)")
    return TrialState.COMPLETE


# ---------------------------------------------------------------------------------------------------
# The study's report: trials.csv, the top trials, importances, the chart, the best command line
# ---------------------------------------------------------------------------------------------------
def short(v) -> str:
    """A value for the table: floats to 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def write_trials_csv(study: optuna.Study, space: dict, path: Path) -> None:
    """Every trial of the study, one row each (written whole, then renamed into place)."""
    cols = ["number", "state", "value", *space, "last_intermediate", "seconds", "run_name", "log", "error"]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        for t in study.get_trials(deepcopy=False):
            last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else ""
            took = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else ""
            w.writerow(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    **t.params,
                    "last_intermediate": last,
                    "seconds": took,
                    **t.user_attrs,
                }
            )
    os.replace(tmp, path)


def draw_chart(study: optuna.Study, metric: str, path: Path) -> None:
    """Objective against trial: completed trials, pruned ones at their last value, the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = study.get_trials(deepcopy=False)
    done = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    cut = [
        (t.number, t.intermediate_values[max(t.intermediate_values)])
        for t in trials
        if t.state == TrialState.PRUNED and t.intermediate_values
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    if done:
        ax.scatter(*zip(*done, strict=True), label="completed", color="tab:blue", zorder=3)
        best, line = None, []
        better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        for n, v in done:
            best = v if best is None else better(best, v)
            line.append((n, best))
        ax.step(*zip(*line, strict=True), where="post", color="tab:green", label="best so far")
    if cut:
        ax.scatter(
            *zip(*cut, strict=True), marker="x", color="tab:red", label="pruned (last reported)", zorder=3
        )
    ax.set(xlabel="trial", ylabel=f"{metric}, mean of the last 10% of updates", title=study.study_name)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(study: optuna.Study, args: Args, space: dict, metric: str, out_dir: Path) -> None:
    """Print the top trials, the importances and the best command line; write trials.csv and the chart."""
    write_trials_csv(study, space, out_dir / "trials.csv")
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    print("study " + study.study_name + ": " + ", ".join(f"{n} {s}" for s, n in states.items() if n))
    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: t.value,
        reverse=args.direction == "maximize",
    )
    if not done:
        print("no trial has completed yet")
        return
    draw_chart(study, metric, out_dir / "objective.png")
    rows = [["trial", metric, *space]]
    rows += [
        [str(t.number), f"{t.value:.4f}", *(short(t.params.get(f, "")) for f in space)] for t in done[:5]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("top trials:")
    for r in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        )
        print("parameter importances (PED-ANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()))
    except (RuntimeError, ValueError) as e:
        print(f"parameter importances: not yet ({e})")
    best = done[0]
    cmd = ["torchrun", "--standalone", f"--nproc-per-node={args.nproc_per_node}", args.script]
    cmd += ["--seed", str(args.seed), "--total-timesteps", str(args.total_timesteps)]
    cmd += to_flags(fixed_params(args)) + to_flags(best.params)
    line = shlex.join(cmd)
    (out_dir / "best_command.txt").write_text(line + "\n")
    print(f"best: trial {best.number}, {metric} {best.value:.4f}; its command:\n{line}")
    print(f"trials.csv, objective.png and best_command.txt in {out_dir}")


# ---------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------
def open_study(args: Args, space: dict, fields: dict, metric: str) -> optuna.Study:
    """Create the study or load it (with the settings it was made with); a new one starts with the script's
    defaults queued as its first trial."""
    settings = {
        "script": Path(args.script).name,
        "metric": metric,
        "space": {f: repr(d) for f, d in space.items()},
    }
    settings.update({k: getattr(args, k) for k in ("total_timesteps", "nproc_per_node", "seed", "fixed")})
    try:
        storage = optuna.storages.RDBStorage(
            args.storage, heartbeat_interval=args.heartbeat, heartbeat_stale_trial_callback=retry
        )
    except Exception as e:
        raise TunerError(f"--storage {args.storage}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    sampler = optuna.samplers.TPESampler(seed=args.sampler_seed)
    warmup = round(args.prune_warmup * REPORTS)  # the earliest step a trial may be pruned at
    if args.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=args.prune_startup, n_warmup_steps=warmup)
    elif args.pruner == "threshold":
        bound = {"lower" if args.direction == "maximize" else "upper": args.prune_below}
        pruner = optuna.pruners.ThresholdPruner(**bound, n_warmup_steps=warmup)
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=args.study_name,
        direction=args.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != args.direction:
        raise TunerError(
            f"--direction {args.direction}: study {args.study_name} is to {study.direction.name.lower()}"
        )
    saved = study.user_attrs.get("settings", settings)
    for k in settings:  # every trial of a study is measured alike
        if saved.get(k) != settings[k]:
            raise TunerError(f"study {args.study_name} was made with {k} {saved.get(k)}, not {settings[k]}: "
                             "rerun it with the same flags, or choose another --study-name")  # fmt: skip
    study.set_user_attr("settings", settings)
    if not study.get_trials(deepcopy=False):
        taken = sorted(Path("runs").glob(f"tune-{args.study_name}-*"))
        if taken:
            raise TunerError(
                f"{taken[0]} exists but study {args.study_name} is new: choose another --study-name"
            )
        if args.enqueue_defaults:
            study.enqueue_trial(default_params(space, fields), user_attrs={"defaults": True})
    return study


def main() -> int:
    args = tyro.cli(Args)
    sys.stdout.reconfigure(line_buffering=True)  # each trial's line as it happens, also into a file
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.trials < 1 or args.nproc_per_node < 1 or args.total_timesteps < 1 or args.heartbeat < 1:
            raise TunerError("--trials, --nproc-per-node, --total-timesteps and --heartbeat must be positive")
        if not 0 <= args.prune_warmup <= 1:
            raise TunerError(f"--prune-warmup {args.prune_warmup}: a fraction of the steps, from 0 to 1")
        info = script_info(args.script)
        metric = args.metric or METRICS.get(Path(args.script).name, "")
        if metric not in info["metrics"]:
            raise TunerError(
                f"--metric {metric!r}: not a column of {args.script}'s progress.csv to optimize "
                f"({', '.join(info['metrics'])})"
            )
        space = build_space(args, info["fields"])
        args.study_name = args.study_name or Path(args.script).stem
        study = open_study(args, space, info["fields"], metric)
    except TunerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path("runs") / f"tune-{args.study_name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    about = {
        **asdict(args),
        "report_only": False,
        "metric": metric,
        "space": {f: repr(d) for f, d in space.items()},
    }
    # the study's own command
    command = shlex.join(["python", *(a for a in sys.argv if a != "--report-only")])
    (out_dir / "study.json").write_text(json.dumps({**about, "command": command}, indent=1))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_stop)

    failures = 0
    while not STOP["signal"] and not args.report_only:
        optuna.storages.fail_stale_trials(study)  # trials of a killed tuner: failed, and queued to continue
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if finished >= args.trials:
            break
        # the last ones run elsewhere (or their tuner died: wait it out)
        if finished + running >= args.trials:
            print(f"waiting for {running} running trial(s): elsewhere, or stale after {2 * args.heartbeat} s")
            time.sleep(args.heartbeat / 2)
            continue
        state = run_trial(study, args, space, metric, out_dir)
        failures = failures + 1 if state == TrialState.FAIL and not STOP["signal"] else 0
        if failures >= args.max_failures:
            print(
                f"error: {failures} trials failed in a row (see their logs in {out_dir}); stopping",
                file=sys.stderr,
            )
            report(study, args, space, metric, out_dir)
            return 1
    report(study, args, space, metric, out_dir)
    return 128 + STOP["signal"] if STOP["signal"] else 0


if __name__ == "__main__":
    sys.exit(main())
