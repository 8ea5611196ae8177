"""Optuna reference for the search benchmark.

Runs Optuna's TPESampler with its defaults on the functions of coordinator/benches/search.rs,
sequentially (each trial is asked after every earlier result is told), and prints one JSON line per function and
seed with the best value after each budget, with the same keys as the Rust bench.

    python scripts/bench_search.py [--seeds 30] [--trials 100] [--budgets 50,100]
"""

import argparse
import json
import math
import sys

import optuna


def main():
    args = parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, objective in FUNCTIONS.items():
        print(f"optuna search bench: {name}, tpe", file=sys.stderr)
        for seed in range(args.seeds):
            bests = run(objective, seed, args.trials, args.budgets)
            line = {
                "system": "optuna",
                "method": "tpe",
                "function": name,
                "seed": seed,
                "best": {str(budget): best for budget, best in zip(args.budgets, bests)},
            }
            print(json.dumps(line), flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=30, help="seeds 0 to N-1 (default 30)")
    parser.add_argument("--trials", type=int, default=100, help="trials per run (default 100)")
    parser.add_argument(
        "--budgets",
        type=lambda text: [int(item) for item in text.split(",")],
        default=[50, 100],
        help="comma-separated trial counts to report the best value at (default 50,100)",
    )
    return parser.parse_args()


def run(objective, seed, num_trials, budgets):
    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    bests = []
    best = math.inf
    for number in range(1, num_trials + 1):
        trial = study.ask()
        value = objective(trial)
        study.tell(trial, value)
        best = min(best, value)
        if number in budgets:
            bests.append(best)
    return bests


def branin(trial):
    x1 = trial.suggest_float("x1", -5.0, 10.0)
    x2 = trial.suggest_float("x2", 0.0, 15.0)
    b = 5.1 / (4.0 * math.pi**2)
    c = 5.0 / math.pi
    t = 1.0 / (8.0 * math.pi)
    return (x2 - b * x1 * x1 + c * x1 - 6.0) ** 2 + 10.0 * (1.0 - t) * math.cos(x1) + 10.0


HARTMANN_ALPHA = [1.0, 1.2, 3.0, 3.2]
HARTMANN_A = [
    [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
    [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
    [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
    [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
]
HARTMANN_P = [
    [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
    [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
    [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
    [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
]


def hartmann6(trial):
    x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)]
    total = 0.0
    for i in range(4):
        exponent = sum(HARTMANN_A[i][j] * (x[j] - HARTMANN_P[i][j]) ** 2 for j in range(6))
        total += HARTMANN_ALPHA[i] * math.exp(-exponent)
    return -total


def mixed(trial):
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    x = trial.suggest_float("x", -5.0, 5.0)
    if kind == "a":
        scale = trial.suggest_float("scale", 1e-3, 10.0, log=True)
        return (x - 1.0) ** 2 / 4.0 + (math.log10(scale) + 1.0) ** 2
    if kind == "b":
        n = trial.suggest_int("n", 1, 16)
        return 0.3 + (x + 2.0) ** 2 / 8.0 + ((n - 11.0) / 4.0) ** 2
    return 1.0 + math.sin(x) ** 2


FUNCTIONS = {"branin": branin, "hartmann6": hartmann6, "mixed": mixed}


if __name__ == "__main__":
    main()
