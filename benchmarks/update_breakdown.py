"""Where the BRO update's time goes, per (width, batch) cell: CPU-seconds of isolated pieces.

For each cell it compiles the whole ``bro.update_n`` (jit + vmap over one seed, as
``train_throughput.py`` times it) and reads XLA's ``cost_analysis`` (FLOPs, bytes accessed) and
the op mix of the compiled HLO (dots, fusions, copies/transposes and the bytes the copies move).
Then it times isolated pieces, each jitted on its own, in CPU-seconds of this process
(``time.process_time``: all threads; wall time is meaningless on a shared box):

* ``critic_fwd``: both heads' forward pass on B inputs;
* ``critic_fwd_bwd``: value and gradient of the quantile loss w.r.t. the critic parameters
  (target fixed);
* ``qloss_fwd_bwd``: the quantile Huber loss and its gradient alone ([2, B, Q] vs [B, Q]);
* ``layernorm``: forward + backward of one LayerNorm on [2, B, W];
* ``actor_through_critic``: value and gradient of the actor loss w.r.t. the actor parameters
  (forward through the critic and backward to its input);
* ``adamw``: one AdamW step on the critic parameters; ``polyak``: one Polyak step;
* ``dispatch``: a jitted call that does nothing but return its (small) argument.

``--variants`` also times the whole update with alternatives of the engine's building blocks
(``valuescale.agents.bro`` module switches), alternating old and new in one process.

Usage (shared box: nice, and read CPU-s, not wall)::

    nice -n 15 python benchmarks/update_breakdown.py --widths 1024 --batches 1024
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter

OBS_DIM, ACT_DIM = 17, 6


def cpu_time_per_call(fn, *args, min_cpu: float = 0.5, repeats: int = 3) -> float:
    """Median CPU-seconds (all threads of this process) per call of ``fn(*args)``."""
    import jax

    jax.block_until_ready(fn(*args))
    t0 = time.process_time()
    jax.block_until_ready(fn(*args))
    one = max(time.process_time() - t0, 1e-5)
    n = max(1, int(min_cpu / one))
    out = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            jax.block_until_ready(fn(*args))
        out.append((time.process_time() - t0) / n)
    return statistics.median(out)


def hlo_summary(compiled) -> dict:
    """Op mix of an optimised HLO module: counts per opcode / fusion kind, where the dots run
    (inside a YNNPACK fusion or as a plain XLA dot), and the bytes the copies move."""
    text = compiled.as_text()
    counts: Counter = Counter()
    copy_bytes = 0
    computation = ""
    ynn_computations = set(
        re.findall(r"kind=kCustom, calls=%([\w.\-]+), backend_config=.*__ynn", text)
    )
    shape_re = re.compile(r"f32\[([\d,]*)\]")
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            computation = head.group(2)
            continue
        m = re.match(r"\s*(ROOT )?%?[\w.\-]+ = (\S+) (\w[\w\-]*)\(", line)
        if not m:
            continue
        op = m.group(3)
        if op == "fusion":
            kind = re.search(r"kind=(\w+)", line)
            op = f"fusion:{kind.group(1) if kind else '?'}"
        if op == "dot":
            op = "dot:ynn" if computation in ynn_computations else "dot:xla"
        counts[op] += 1
        if op in ("copy", "transpose"):
            s = shape_re.search(m.group(2))
            if s and s.group(1):
                n = 1
                for d in s.group(1).split(","):
                    n *= int(d)
                copy_bytes += 8 * n  # read + write
    keep = {
        k: v
        for k, v in counts.items()
        if k.startswith(("dot", "fusion")) or k in ("copy", "transpose", "while", "custom-call")
    }
    return {"ops": dict(sorted(keep.items())), "copy_bytes": copy_bytes}


def cost(compiled) -> dict:
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list | tuple) else c
    return {"flops": float(c.get("flops", 0.0)), "bytes": float(c.get("bytes accessed", 0.0))}


def build(width: int, batch: int):
    import jax
    import numpy as np

    from valuescale.agents import bro
    from valuescale.agents.bro.config import BROConfig
    from valuescale.replay import Replay, stack_seeds

    cfg = BROConfig(critic_width=width, batch_size=batch)
    state = bro.init_seeds(jax.random.split(jax.random.key(0), 1), OBS_DIM, ACT_DIM, cfg)
    rng = np.random.default_rng(0)
    cap = max(10_000, batch)
    replay = Replay(
        obs=rng.normal(size=(cap, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(cap, ACT_DIM)).astype(np.float32),
        rewards=rng.uniform(0, 1, size=cap).astype(np.float32),
        masks=np.ones(cap, np.float32),
        next_obs=rng.normal(size=(cap, OBS_DIM)).astype(np.float32),
        pos=np.zeros((), np.int32),
        size=np.asarray(cap, np.int32),
    )
    replay = stack_seeds([jax.tree.map(jax.numpy.asarray, replay)])
    return cfg, state, replay


def whole_update(width: int, batch: int, n: int) -> dict:
    """Compiled update_n (vmapped over one seed): cost analysis, HLO op mix, CPU-s per update."""
    import jax

    from valuescale.agents import bro

    cfg, state, replay = build(width, batch)
    fn = jax.jit(jax.vmap(lambda s, r: bro.update_n(s, r, cfg, n)))
    compiled = fn.lower(state, replay).compile()
    res = {"cost_per_call": cost(compiled), "hlo": hlo_summary(compiled)}
    holder = {"s": state}

    def call():
        holder["s"], info = compiled(holder["s"], replay)
        return info

    res["cpu_s_per_update"] = cpu_time_per_call(call) / n
    return res


def pieces(width: int, batch: int) -> dict:
    """CPU-s and XLA cost of the update's pieces, each jitted alone (one seed, no vmap)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from valuescale.agents import bro
    from valuescale.agents.bro import agent as bro_agent
    from valuescale.agents.bro.loss import polyak_update, quantile_huber_loss
    from valuescale.networks.bronet import apply_double_critic

    cfg, state, _ = build(width, batch)
    st = jax.tree.map(lambda x: x[0], state)
    actor_m, critic_m, _ = bro_agent._modules(cfg, ACT_DIM)
    k = jax.random.split(jax.random.key(1), 6)
    obs = jax.random.normal(k[0], (batch, OBS_DIM))
    act = jnp.tanh(jax.random.normal(k[1], (batch, ACT_DIM)))
    target = jax.random.normal(k[2], (batch, cfg.n_quantiles))
    pred = jax.random.normal(k[3], (2, batch, cfg.n_quantiles))
    h = jax.random.normal(k[4], (2, batch, width))
    cp = st.critic_params

    def critic_fwd(p):
        return apply_double_critic(critic_m, p, obs, act)

    def critic_fwd_bwd(p):
        return jax.value_and_grad(
            lambda p: quantile_huber_loss(apply_double_critic(critic_m, p, obs, act), target)
        )(p)

    def qloss(pr):
        return jax.value_and_grad(quantile_huber_loss)(pr, target)

    ln = nn.LayerNorm()
    ln_p = ln.init(k[5], h[0])

    def layernorm(x):
        return jax.value_and_grad(lambda x: jnp.sum(ln.apply(ln_p, x) ** 2))(x)

    def actor_through_critic(ap):
        def loss(ap):
            mu, log_std = actor_m.apply({"params": ap}, obs)
            a, logp = bro_agent.sample_tanh_gaussian(k[5], mu, log_std)
            q = apply_double_critic(critic_m, cp, obs, a)
            return jnp.mean(0.1 * logp - jnp.mean(0.5 * (q[0] + q[1]), -1))

        return jax.value_and_grad(loss)(ap)

    tx = optax.adamw(3e-4, weight_decay=1e-4)
    opt = tx.init(cp)

    def adamw(p, o):
        upd, o = tx.update(p, o, p)
        return optax.apply_updates(p, upd), o

    def polyak(p, t):
        return polyak_update(p, t, 0.005)

    def dispatch(x):
        return x

    todo = {
        "critic_fwd": (critic_fwd, (cp,)),
        "critic_fwd_bwd": (critic_fwd_bwd, (cp,)),
        "qloss_fwd_bwd": (qloss, (pred,)),
        "layernorm": (layernorm, (h,)),
        "actor_through_critic": (actor_through_critic, (st.actor_params,)),
        "adamw": (adamw, (cp, opt)),
        "polyak": (polyak, (cp, st.target_critic_params)),
        "dispatch": (dispatch, (st.step,)),
    }
    out = {}
    for name, (f, args) in todo.items():
        compiled = jax.jit(f).lower(*args).compile()
        out[name] = {**cost(compiled), "cpu_s": cpu_time_per_call(compiled, *args)}
    del bro
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="64,256,512,1024")
    p.add_argument("--batches", default="64,256,1024")
    p.add_argument("--n", type=int, default=10, help="updates per jitted call")
    p.add_argument("--no-pieces", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for w in [int(v) for v in args.widths.split(",")]:
        for b in [int(v) for v in args.batches.split(",")]:
            row = {"width": w, "batch": b, "update": whole_update(w, b, args.n)}
            if not args.no_pieces:
                row["pieces"] = pieces(w, b)
            rows.append(row)
            u = row["update"]
            print(
                f"W {w:>5} B {b:>5}: {1e3 * u['cpu_s_per_update']:9.2f} CPU-ms/update, "
                f"XLA {u['cost_per_call']['flops'] / 1e9:8.2f} GFLOP "
                f"{u['cost_per_call']['bytes'] / 1e9:7.3f} GB per call-body, "
                "copies "
                f"{u['hlo']['copy_bytes'] / 1e6:7.1f} MB; ops {u['hlo']['ops']}",
                flush=True,
            )
            for name, r in row.get("pieces", {}).items():
                print(
                    f"    {name:>22}: {1e3 * r['cpu_s']:9.3f} CPU-ms  "
                    f"{r['flops'] / 1e6:10.1f} MFLOP {r['bytes'] / 1e6:9.2f} MB",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
