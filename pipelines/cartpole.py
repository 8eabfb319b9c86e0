"""`python -m pipelines cartpole`: train a DQN on CartPole, then judge it on 100 episodes.

DQN learns from an environment, not from a dataset split, so it is not a
recipe of the train stage. This entry trains (`kdl.models.dqn.train_cartpole`),
evaluates the greedy policy on 100 fresh episodes and writes `model.keras` and
`metrics.json` (atomically) under `<out>/<timestamp>/`. The bar is CartPole's
"solved": a mean return >= 195 over 100 episodes (exit 1 below it).
"""

from __future__ import annotations

import time
from pathlib import Path

BAR = 195.0


def run_cartpole(out: Path, *, steps: int = 50_000, seed: int = 0, episodes: int = 100,
                 log=print) -> dict:
    import numpy as np

    from kdl.io import atomic_write_json
    from kdl.models.dqn import evaluate_policy, train_cartpole
    from pipelines.stages.common import save_model

    if steps < 1 or episodes < 1:
        raise ValueError("--steps and --episodes must be >= 1")
    run_dir = Path(out) / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    model, train_returns = train_cartpole(steps=steps, seed=seed, log=log)
    returns = evaluate_policy(model, episodes=episodes)
    metrics = {"mean_return": float(np.mean(returns)), "min_return": float(np.min(returns)),
               "episodes": episodes, "bar": BAR, "solved": bool(np.mean(returns) >= BAR),
               "training_episodes": len(train_returns), "seed": seed, "steps": steps}
    save_model(model, run_dir / "model.keras")
    atomic_write_json(run_dir / "metrics.json", metrics)
    log(f"mean greedy return over {episodes} episodes: {metrics['mean_return']:.1f} "
        f"(bar {BAR:.0f}): {'solved' if metrics['solved'] else 'NOT solved'}; {run_dir}")
    return {**metrics, "run_dir": str(run_dir)}
