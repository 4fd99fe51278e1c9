"""Throughput of an agent's update (and optionally of the full training loop) on this machine.

Prints, for each (seeds, critic width, batch size) cell, the updates/s of the jitted, seed-vmapped
``update_n`` of ``--agent`` (default bro; cheetah-run dimensions: obs 17, act 6; passive critic
off), the achieved GFLOP/s (BRO: the analytic dense-layer count, see ``valuescale.flops``; an
agent without one, such as simbav2: XLA's cost analysis of the compiled call), the same as a
fraction of a
2048^3 float32 matmul measured in the same run, and for one seed the ratio to the authors' BRO
implementation measured on this box (anchor table below). With several seed counts it also prints
the cost of S vmapped seeds relative to one seed. ``--train-loop`` adds env steps/s of a full
``valuescale.train.run_training`` loop.

Warm-up (compilation and two calls) is excluded; each cell is timed ``--repeats`` times and the
median is reported. Other processes share the CPU: pin with ``--cpus 0,1`` (applied before JAX is
imported); the ``other`` column is the largest share of the machine's CPU that other processes
took during a kept repetition, and ``--max-foreign-load 0.05`` retries repetitions disturbed by
more than that.

Examples::

    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --widths 64,256 --batches 64 --seeds 1
    python benchmarks/train_throughput.py --json benchmarks/out/throughput.json
    python benchmarks/train_throughput.py --agent simbav2 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

OBS_DIM, ACT_DIM = 17, 6  # cheetah-run

# updates/s of the authors' BRO implementation on this machine, one seed, cheetah-run dims
ANCHOR: dict[tuple[int, int], float] = {
    (64, 64): 176.0,
    (64, 256): 29.7,
    (64, 1024): 8.4,
    (256, 64): 74.0,
    (256, 256): 20.9,
    (256, 1024): 5.5,
    (512, 64): 37.0,
    (512, 256): 11.9,
    (512, 1024): 3.1,
    (1024, 64): 7.4,
    (1024, 256): 3.7,
    (1024, 1024): 1.2,
}


def _int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{flag}: expected comma-separated ints, got {text!r}"
        ) from None
    if not values or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"{flag}: expected ints >= {minimum}, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--agent", default="bro", help="agent whose update_n is timed (bro, simbav2)")
    p.add_argument("--widths", default="64,256,512,1024", help="critic widths W")
    p.add_argument("--batches", default="64,256,1024", help="batch sizes B")
    p.add_argument("--seeds", default="1,5", help="numbers of vmapped seeds S")
    p.add_argument(
        "--updates-per-call", type=int, default=10, help="n of update_n (updates per jit call)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per cell (median)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed repetition")
    p.add_argument("--passive-critic", action="store_true", help="also train a passive critic")
    p.add_argument("--cpus", default=None, help="pin to these CPU ids, e.g. 0,1 (before JAX)")
    p.add_argument(
        "--quick", action="store_true", help="W 64,512 x B 256 x S 1; 2 repeats of 0.5 s"
    )
    p.add_argument("--xla-cost", action="store_true", help="also print XLA's FLOP estimate")
    p.add_argument(
        "--train-loop", action="store_true", help="also time valuescale.train.run_training"
    )
    p.add_argument("--train-steps", type=int, default=8000, help="env steps of the longer loop run")
    p.add_argument(
        "--max-foreign-load",
        type=float,
        default=1.0,
        help="retry a timed repetition while other processes use more than this share of the "
        "machine's CPU (0.05 = 5%%; 1.0 never retries)",
    )
    p.add_argument(
        "--max-retries", type=int, default=30, help="retries per repetition (2 s pause each)"
    )
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    return p


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy ticks of the whole machine, total ticks, ticks of this process incl. threads)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    with open("/proc/self/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    own = int(stat[11]) + int(stat[12])  # utime + stime
    return total - idle, total, own


class Timer:
    """Times repetitions and measures the CPU share other processes took meanwhile.

    A repetition during which other processes used more than ``max_foreign`` of the machine's CPU
    capacity is retried (after a pause), up to ``max_retries`` times per repetition; the foreign
    share of every kept repetition is recorded so tables say how quiet the machine was.
    """

    def __init__(self, max_foreign: float, max_retries: int) -> None:
        self.max_foreign = max_foreign
        self.max_retries = max_retries
        self.foreign: list[float] = []

    def time_calls(self, call, min_time: float, repeats: int) -> list[float]:
        """Seconds per call, one value per repetition (each repetition lasts >= min_time)."""
        t0 = time.perf_counter()
        call()
        one = max(time.perf_counter() - t0, 1e-6)
        n_calls = max(1, int(min_time / one))
        per_call = []
        for _ in range(repeats):
            for attempt in range(self.max_retries + 1):
                busy0, total0, own0 = _cpu_ticks()
                t0 = time.perf_counter()
                for _ in range(n_calls):
                    call()
                elapsed = time.perf_counter() - t0
                busy1, total1, own1 = _cpu_ticks()
                foreign = ((busy1 - busy0) - (own1 - own0)) / max(total1 - total0, 1)
                if foreign <= self.max_foreign or attempt == self.max_retries:
                    break
                time.sleep(2.0)
            per_call.append(elapsed / n_calls)
            self.foreign.append(max(foreign, 0.0))
        return per_call


def bench_matmul(timer: Timer, repeats: int, min_time: float) -> float:
    """Median GFLOP/s of a 2048^3 float32 matmul."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    times = timer.time_calls(lambda: mm(a, b).block_until_ready(), min_time, repeats)
    return 2 * n**3 / statistics.median(times) / 1e9


def _random_replay(capacity: int, seed: int):
    import jax.numpy as jnp
    import numpy as np

    from valuescale.replay import Replay

    rng = np.random.default_rng(seed)
    return Replay(
        obs=jnp.asarray(rng.normal(size=(capacity, OBS_DIM)), jnp.float32),
        actions=jnp.asarray(rng.uniform(-1, 1, size=(capacity, ACT_DIM)), jnp.float32),
        rewards=jnp.asarray(rng.uniform(0, 1, size=capacity), jnp.float32),
        masks=jnp.ones((capacity,), jnp.float32),
        next_obs=jnp.asarray(rng.normal(size=(capacity, OBS_DIM)), jnp.float32),
        pos=jnp.zeros((), jnp.int32),
        size=jnp.asarray(capacity, jnp.int32),
    )


def bench_update(
    width: int, batch: int, n_seeds: int, n: int, args: argparse.Namespace, timer: Timer
) -> dict[str, float]:
    """Time the jitted, seed-vmapped update_n of one cell."""
    import jax

    from valuescale.agents import config_class, get_agent
    from valuescale.config import TrainConfig
    from valuescale.flops import update_flops
    from valuescale.replay import stack_seeds

    agent = get_agent(args.agent)
    cfg = config_class(args.agent)(
        critic_width=width,
        batch_size=batch,
        passive_critic=args.passive_critic,
        passive_critic_width=width,
    )
    if hasattr(agent, "bind"):  # run facts (SimbaV2: critic heads, lr decay length)
        cfg = agent.bind(cfg, TrainConfig("cheetah-run", agent=args.agent, agent_config=cfg))
    keys = jax.random.split(jax.random.key(0), n_seeds)
    states = agent.init_seeds(keys, OBS_DIM, ACT_DIM, cfg)
    replays = stack_seeds([_random_replay(max(10_000, batch), s) for s in range(n_seeds)])

    def step(state, replay):
        return agent.update_n(state, replay, cfg, n)

    fn = jax.jit(jax.vmap(step), donate_argnums=0)
    result: dict[str, float] = {}
    t0 = time.perf_counter()
    if args.xla_cost:
        compiled = fn.lower(states, replays).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        result["xla_flops_per_call"] = float(cost.get("flops", float("nan")))
    holder = {"states": states}

    def call():
        holder["states"], info = fn(holder["states"], replays)
        jax.block_until_ready(info)

    call()
    result["compile_s"] = time.perf_counter() - t0
    call()
    n_foreign = len(timer.foreign)
    per_call = timer.time_calls(call, args.min_time, args.repeats)
    result["foreign_cpu_share"] = max(timer.foreign[n_foreign:])
    sec_per_update = statistics.median(per_call) / n
    # dense-layer FLOPs (valuescale.flops); --xla-cost adds XLA's count of one update of every
    # seed (the loop's body, counted once), which includes the elementwise work
    flops = update_flops(OBS_DIM, ACT_DIM, cfg) * n_seeds
    result.update(
        seeds=n_seeds,
        width=width,
        batch_size=batch,
        updates_per_s=1.0 / sec_per_update,
        updates_per_s_min=n / max(per_call),
        updates_per_s_max=n / min(per_call),
        seed_updates_per_s=n_seeds / sec_per_update,
        gflops=flops / sec_per_update / 1e9,
        flops_per_update=float(flops),
        critic_params=agent.critic_param_count(jax.tree.map(lambda x: x[0], holder["states"])),
    )
    return result


def _run_loop(agent: str, width: int, batch: int, steps: int) -> float:
    """Wall seconds of one run_training call on cheetah-run (UTD 1, one seed)."""
    from valuescale.config import TrainConfig
    from valuescale.train import run_training

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            env="cheetah-run",
            agent=agent,
            seeds=(0,),
            utd=1.0,
            steps=steps,
            critic_width=width,
            batch_size=batch,
            warmup_steps=1000,
            eval_interval=steps,
            eval_episodes=1,
            checkpoint_every=0,
            replay_size=max(steps, batch),
            log_interval=1000,
        )
        t0 = time.perf_counter()
        run_training(cfg, Path(tmp), progress=False)
        return time.perf_counter() - t0


def bench_train_loop(agent: str, width: int, batch: int, steps: int) -> dict[str, float]:
    """Steady-state env steps/s of run_training (cheetah-run, UTD 1, one seed).

    Two runs of ``steps // 2`` and ``steps`` env steps share compilation, warm-up (1000 random
    steps) and the final evaluation episode; the difference of their wall times divided by the
    difference of their steps is the training loop's steady-state rate (env steps: simulator
    steps, 2 per agent step for SimbaV2).
    """
    short, long = steps // 2 // 2 * 2, steps // 2 * 2  # multiples of SimbaV2's action repeat
    wall_short = _run_loop(agent, width, batch, short)
    wall_long = _run_loop(agent, width, batch, long)
    return {
        "width": width,
        "batch_size": batch,
        "steps": [short, long],
        "wall_s": [wall_short, wall_long],
        "env_steps_per_s": (long - short) / max(wall_long - wall_short, 1e-9),
        "env_steps_per_s_whole_run": long / wall_long,
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        widths = _int_list(args.widths, "--widths")
        batches = _int_list(args.batches, "--batches")
        seed_counts = _int_list(args.seeds, "--seeds")
        cpus = _int_list(args.cpus, "--cpus", minimum=0) if args.cpus else None
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.updates_per_call < 1 or args.repeats < 1 or args.min_time <= 0:
        parser.error("--updates-per-call and --repeats must be >= 1, --min-time > 0")
    if args.train_steps < 4000:
        parser.error("--train-steps must be >= 4000 (the shorter run needs training past warm-up)")
    if args.quick:
        widths, batches, seed_counts = [64, 512], [256], [1]
        args.repeats, args.min_time = 2, 0.5
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"CPUs {sorted(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    timer = Timer(args.max_foreign_load, args.max_retries)
    matmul = bench_matmul(timer, args.repeats, args.min_time)
    print(
        f"2048^3 float32 matmul: {matmul:.1f} GFLOP/s (median; other processes took up to "
        f"{100 * max(timer.foreign):.0f}% of the CPU meanwhile)\n",
        flush=True,
    )

    header = (
        f"{'S':>2} {'W':>5} {'B':>5} {'upd/s':>8} {'(min-max)':>15} {'GFLOP/s':>8} "
        f"{'%mm':>5} {'anchor':>7} {'ratio':>6} {'other':>6}"
    )
    print(header)
    rows = []
    for n_seeds in seed_counts:
        for width in widths:
            for batch in batches:
                r = bench_update(width, batch, n_seeds, args.updates_per_call, args, timer)
                anchor = (
                    ANCHOR.get((width, batch)) if n_seeds == 1 and args.agent == "bro" else None
                )
                r["anchor_updates_per_s"] = anchor
                r["ratio_to_anchor"] = r["updates_per_s"] / anchor if anchor else None
                r["fraction_of_matmul"] = r["gflops"] / matmul
                rows.append(r)
                spread = f"({r['updates_per_s_min']:.1f}-{r['updates_per_s_max']:.1f})"
                line = (
                    f"{n_seeds:>2} {width:>5} {batch:>5} {r['updates_per_s']:>8.1f} {spread:>15} "
                    f"{r['gflops']:>8.1f} {100 * r['fraction_of_matmul']:>4.0f}%"
                )
                line += f" {anchor:>7.1f} {r['ratio_to_anchor']:>5.2f}x" if anchor else " " * 15
                line += f" {100 * r['foreign_cpu_share']:>5.0f}%"
                if "xla_flops_per_call" in r:
                    line += f"  xla/analytic {r['xla_flops_per_call'] / r['flops_per_update']:.2f}"
                print(line, flush=True)

    if len(seed_counts) > 1 and 1 in seed_counts:
        print("\ncost of S vmapped seeds relative to one seed (time per update):")
        single = {(r["width"], r["batch_size"]): r for r in rows if r["seeds"] == 1}
        for r in rows:
            base = single.get((r["width"], r["batch_size"]))
            if r["seeds"] > 1 and base:
                r["cost_vs_one_seed"] = base["updates_per_s"] / r["updates_per_s"]
                print(
                    f"  S={r['seeds']} W={r['width']:>5} B={r['batch_size']:>5}: "
                    f"{r['cost_vs_one_seed']:.2f}x"
                )

    loop = None
    if args.train_loop:
        try:
            loop = bench_train_loop(args.agent, widths[0], batches[0], args.train_steps)
        except ImportError as e:
            print(f"\ntrain loop skipped: {e}")
        else:
            print(
                f"\nrun_training {args.agent} cheetah-run W={loop['width']} B={loop['batch_size']} UTD 1: "
                f"{loop['env_steps_per_s']:.1f} env steps/s steady state "
                f"({loop['env_steps_per_s_whole_run']:.1f} over a whole {loop['steps'][1]}-step "
                "run incl. compilation, warm-up and evaluation)"
            )
            single = [
                r
                for r in rows
                if r["seeds"] == 1 and (r["width"], r["batch_size"]) == (widths[0], batches[0])
            ]
            if single:
                ratio = loop["env_steps_per_s"] / single[0]["updates_per_s"]
                loop["fraction_of_update_rate"] = ratio
                print(f"  = {100 * ratio:.0f}% of the update-only rate of the same cell")

    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "jax": jax.__version__,
            "cpus": sorted(os.sched_getaffinity(0)),
            "load_average": os.getloadavg(),
            "matmul_gflops": matmul,
            "matmul_foreign_cpu_share": max(timer.foreign[: args.repeats]),
            "agent": args.agent,
            "updates_per_call": args.updates_per_call,
            "passive_critic": args.passive_critic,
            "rows": rows,
            "train_loop": loop,
        }
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
