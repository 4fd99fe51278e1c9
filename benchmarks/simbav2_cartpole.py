"""SimbaV2 learns cartpole-balance: a plain Python loop over dm_control, without the engine.

A demonstration of ``valuescale.agents.simbav2`` and of the host-side contract its package
docstring states (action repeat, float64 observation/reward statistics pushed into the state before
every update and action, the lr schedule's length from the planned updates). One seed, one env;
random actions for ``--warmup`` agent steps, then ``--utd`` updates per agent step. Prints the
return of deterministic evaluation episodes (the sum of simulator rewards over 1,000 simulator
steps, as the paper logs it) before training, at each ``--eval-every`` and at the end, and the
mean return of uniformly random actions for comparison.

Example, with what it printed on the shared 2-core CPU (2026-12-06; one seed, critic W 128,
B 128, one update per agent step)::

    python benchmarks/simbav2_cartpole.py --steps 15000 --lr 3e-4 --eval-every 2500
    # eval return at agent steps 0 / 2.5k / 5k / 7.5k / 10k / 12.5k / 15k (x2 simulator steps):
    # 428, 392, 419, 351, 354, 507, 925; uniform random actions 337; 17 min wall
    # (with the published lr 1e-4: 428 at 0 and 429 at 4k agent steps; with lr 1e-3 and two
    # updates per agent step: 268 at 4k -- 4k agent steps are too few for this agent here)

The same run through the engine (``--agent simbav2``: action repeat, host statistics, lr decay
from ``bind``; other random streams), measured 2026-12-06 on the shared CPU at nice 15::

    python -m valuescale.train --env cartpole-balance --agent simbav2 --seeds 0 --utd 1 \
        --steps 30000 --warmup-steps 2000 --eval-interval 5000 --eval-episodes 3 \
        --replay-size 30000 --width 128 --batch-size 128 --lr 3e-4 --temperature-lr 3e-4 \
        --checkpoint-every 0 --threads 1 --out /tmp/sw_learn
    # eval return at 5k / 10k / 15k / 20k / 25k / 30k simulator steps: 242, 386, 362, 752, 889,
    # 995; 14,000 updates; 555 s wall (54 simulator steps/s)

Where those 37 ms per agent step went (2026-12-06, one core, nice 15, CPU ms per agent step of
the engine's pieces at 1 seed; the box was busy, so +-30 %): env step (2 simulator steps) 0.5,
float64 host statistics (reward + observe + float32 copy out) 0.1, a warm-up step's fused call
(insert + 0 updates + action) 0.7-1.1, evaluation's action 0.2-0.3 -- and the fused call with one
update 24 (W 128, B 128, actor 128), 8.8 (W 64, B 64, actor 64), 6.9 (W 32, B 64, actor 32).
The update was all of it, and 4-7 ms of that was one XLA CPU quirk: the categorical projection's
broadcast product summed over axis -2 runs ~15x slower under a size-1 vmap axis (one seed) than
unbatched or at 2 seeds. Written as a contraction (``loss.categorical_projection``; states after
3 updates bit-identical) the one-seed update costs 17 (W 128 / B 128), 4.0 (W 64 / B 64) and
2-3.3 (W 32 / B 64) ms; 2 vmapped seeds at W 32 / B 64: 5.6 ms. Compiling the fused step costs
~15-18 s (cartpole or h1, any small width), the largest fixed cost of a short run.

No cheap run that learns was found (same flags as above, seeds 0,1 vmapped, lr = temperature lr
= 3e-4 unless said, eval 2 episodes; returns per seed at each 4k simulator steps; CPU-s of the
whole CLI process, user + sys, busy box)::

    W 64, actor 64, B 64, 24k steps, warm-up 2k:          seed 0: 465 400 592 496 355 335
                                                          seed 1: 360 320 452 732 941 993  169 s
    the same with lr 1e-3:                                seed 0: 485 610 536 262 460 913
                                                          seed 1: 260 265 364 600 513 299  173 s
    W 32, actor 32, B 128, 20k steps, warm-up 1k:         seed 0: 306 321 265 263 326
                                                          seed 1: 249 348 360 244 464      127 s
    W 64, actor 64, B 128, 20k steps, warm-up 1k:         seed 0: 500 283 310 285 314
                                                          seed 1: 349 327 270 284 299      177 s

so learning (above the ~735 of a zero-action policy) starts between 16k and 24k simulator steps,
not on every seed, and such a run costs ~170 CPU-s: no slow test asserts it yet.
"""

from __future__ import annotations

import argparse
import json
import time


def evaluate(agent, act_fn, env_name: str, seed: int, episodes: int, action_repeat: int):
    """Mean return of ``episodes`` deterministic episodes (``act_fn=None``: random actions)."""
    import numpy as np

    from valuescale.agents.simbav2 import ActionRepeat
    from valuescale.envs import make_env

    rng = np.random.default_rng(seed)
    returns = []
    for e in range(episodes):
        env = ActionRepeat(make_env(env_name, 10_000 + 97 * seed + e), action_repeat)
        obs, total = env.reset(), 0.0
        for _ in range(env.max_episode_steps):
            if act_fn is None:
                action = rng.uniform(-1.0, 1.0, env.act_dim).astype(np.float32)
            else:
                action = np.asarray(act_fn(agent, obs))
            obs, reward, terminated, truncated = env.step(action)
            total += reward
            if terminated or truncated:
                break
        returns.append(total)
    return float(np.mean(returns))


def train(
    env_name: str = "cartpole-balance",
    steps: int = 15000,
    warmup: int = 1000,
    utd: int = 1,
    seed: int = 0,
    eval_every: int = 2500,
    eval_episodes: int = 3,
    critic_width: int = 128,
    batch_size: int = 128,
    lr: float | None = None,
) -> dict:
    """Train one seed for ``steps`` agent steps; returns the evaluation curve and timings."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from valuescale.agents import simbav2 as sv
    from valuescale.envs import make_env
    from valuescale.replay import replay_init, replay_insert

    lrs = {} if lr is None else {"lr": lr, "temperature_lr": lr}
    cfg = sv.SimbaV2Config(
        critic_width=critic_width,
        batch_size=batch_size,
        lr_decay_updates=max(1, (steps - warmup) * utd),
        **lrs,
    ).for_env(env_name)
    env = sv.ActionRepeat(make_env(env_name, seed), cfg.action_repeat)
    state = sv.init(jax.random.PRNGKey(seed), env.obs_dim, env.act_dim, cfg)
    stats = sv.RunningStatistics(1, env.obs_dim, cfg.discount, cfg.g_max)
    replay = replay_init(steps, env.obs_dim, env.act_dim)
    update = jax.jit(lambda s, r: sv.update_n(s, r, cfg, utd), donate_argnums=0)
    insert = jax.jit(replay_insert, donate_argnums=0)
    sample = jax.jit(lambda s, o, k: sv.act(s, o, k, False))
    greedy = jax.jit(lambda s, o: sv.act(s, o, None, True))

    def with_stats(s):
        one = {k: v[0] for k, v in stats.device_arrays().items()}
        return sv.set_statistics(s, one)

    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed + 1)
    curve = [(0, evaluate(state, greedy, env_name, seed, eval_episodes, cfg.action_repeat))]
    obs = env.reset()
    episode_returns, episode_return, started = [], 0.0, time.perf_counter()
    info = {}
    for t in range(steps):
        stats.observe_obs(obs[None])
        state = with_stats(state)
        if t < warmup:
            action = rng.uniform(-1.0, 1.0, env.act_dim).astype(np.float32)
        else:
            key, k_act = jax.random.split(key)
            action = np.asarray(sample(state, jnp.asarray(obs), k_act))
        next_obs, reward, terminated, truncated = env.step(action)
        replay = insert(replay, obs, action, reward, 0.0 if terminated else 1.0, next_obs)
        stats.observe_reward(np.array([reward]), np.array([float(terminated or truncated)]))
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            episode_returns.append(episode_return)
            obs, episode_return = env.reset(), 0.0
        if t + 1 >= warmup:
            state = with_stats(state)
            state, info = update(state, replay)
        if (t + 1) % eval_every == 0 or t + 1 == steps:
            ret = evaluate(state, greedy, env_name, seed, eval_episodes, cfg.action_repeat)
            curve.append((t + 1, ret))
            print(
                f"agent step {t + 1:6d} (sim {cfg.action_repeat * (t + 1):6d}): eval return "
                f"{ret:7.1f}  critic_loss {float(info.get('critic_loss', np.nan)):.3f}  "
                f"alpha {float(info.get('temperature', np.nan)):.4f}  "
                f"{time.perf_counter() - started:6.0f} s",
                flush=True,
            )
    random_return = evaluate(None, None, env_name, seed, eval_episodes, cfg.action_repeat)
    return {
        "env": env_name,
        "seed": seed,
        "steps": steps,
        "utd": utd,
        "critic_width": critic_width,
        "batch_size": batch_size,
        "lr": cfg.critic_learning_rate,
        "curve": curve,
        "train_episode_returns": episode_returns,
        "random_return": random_return,
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="cartpole-balance")
    parser.add_argument("--steps", type=int, default=15000, help="agent steps (x2 sim steps)")
    parser.add_argument("--warmup", type=int, default=1000, help="random-action agent steps")
    parser.add_argument("--utd", type=int, default=1, help="updates per agent step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--eval-episodes", type=int, default=3)
    parser.add_argument("--critic-width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--lr", type=float, help="initial lr of actor, critic and temperature (default 1e-4)"
    )
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = train(
        args.env,
        args.steps,
        args.warmup,
        args.utd,
        args.seed,
        args.eval_every,
        args.eval_episodes,
        args.critic_width,
        args.batch_size,
        args.lr,
    )
    print(
        f"final eval return {result['curve'][-1][1]:.1f} (before training "
        f"{result['curve'][0][1]:.1f}, random actions {result['random_return']:.1f}), "
        f"{result['seconds']:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
