"""Optuna reference for the scheduler benchmark.

P processes share one study through a shared storage and each runs a bounded number of
ask -> report(one intermediate value) -> tell rounds with a RandomSampler over the same four
parameters as the tunefleet bench (coordinator/benches/scheduler.rs). Sampling the parameters
(`suggest_*`) is timed as part of ask, because tunefleet samples inside AcquireTrial.

Each configuration prints one JSON line on stdout with the same keys as the tunefleet bench:
`acquire_*` contains ask's numbers and `complete_mean_ms` contains tell's. Progress goes to stderr.

    python scripts/bench_optuna.py [--processes 1,4,16] [--trials 2000]
        [--storages sqlite,journal] [--timeout 300]

Both storages are durable: Optuna's SQLite storage commits every write with SQLite's default
synchronous=FULL, and JournalFileBackend calls fsync after every append (optuna 5.1.0). The
files live in a temporary directory under $TMPDIR (else /tmp).
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

STUDY_NAME = "scheduler-bench"
METRIC_DIRECTION = "maximize"
# Seconds a SQLite connection waits for another process's lock before it raises.
SQLITE_LOCK_TIMEOUT_S = 300


def main():
    args = parse_args()
    for storage_kind in args.storages:
        for num_processes in args.processes:
            print(
                f"optuna bench: {storage_kind}, {num_processes} processes, {args.trials} trials",
                file=sys.stderr,
            )
            result = run_configuration(storage_kind, num_processes, args.trials, args.timeout)
            print(json.dumps(result), flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--processes",
        type=int_list,
        default=[1, 4, 16],
        help="comma-separated process counts, one configuration each (default 1,4,16)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=2000,
        help="trials per configuration, split evenly over the processes (default 2000)",
    )
    parser.add_argument(
        "--storages",
        type=lambda text: text.split(","),
        default=["sqlite", "journal"],
        help="comma-separated storages: sqlite, journal (default both)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds after which a process stops asking for trials (default 300)",
    )
    args = parser.parse_args()
    for kind in args.storages:
        if kind not in ("sqlite", "journal"):
            parser.error(f"invalid storage {kind!r}: expected sqlite or journal")
    if args.trials < 1 or any(p < 1 for p in args.processes):
        parser.error("--trials and --processes must be >= 1")
    return args


def int_list(text):
    return [int(item) for item in text.split(",")]


def make_storage(kind, path):
    if kind == "sqlite":
        connect_args = {"timeout": SQLITE_LOCK_TIMEOUT_S}
        return RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": connect_args})
    return JournalStorage(JournalFileBackend(path))


def run_configuration(storage_kind, num_processes, num_trials, timeout_s):
    """Run one storage and process count and return its JSON-ready summary."""
    with tempfile.TemporaryDirectory(prefix="bench-optuna-") as directory:
        path = os.path.join(directory, "study.db" if storage_kind == "sqlite" else "journal.log")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.create_study(
            study_name=STUDY_NAME,
            storage=make_storage(storage_kind, path),
            direction=METRIC_DIRECTION,
        )

        # spawn, so that no process inherits another's database connection.
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(num_processes)
        results = context.Queue()
        base_share, remainder = divmod(num_trials, num_processes)
        shares = [base_share + (i < remainder) for i in range(num_processes)]
        processes = [
            context.Process(
                target=run_process,
                args=(storage_kind, path, share, timeout_s, barrier, results),
            )
            for share in shares
        ]
        for process in processes:
            process.start()
        logs = [results.get() for _ in processes]
        for process in processes:
            process.join()
            if process.exitcode != 0:
                raise SystemExit(f"a bench process exited with code {process.exitcode}")
        errors = [log["error"] for log in logs if log.get("error")]
        if errors:
            raise SystemExit(f"a bench process failed: {errors[0]}")

        num_completed = sum(len(log["ask"]) for log in logs)
        study = optuna.load_study(study_name=STUDY_NAME, storage=make_storage(storage_kind, path))
        num_stored = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if num_stored != num_completed:
            raise SystemExit(
                f"the {storage_kind} study contains {num_stored} complete trials, "
                f"expected {num_completed}"
            )
        return summarize(storage_kind, num_processes, num_trials, logs)


def run_process(storage_kind, path, num_trials, timeout_s, barrier, results):
    """Run up to num_trials ask/report/tell rounds and send the timings to the parent."""
    log = {"ask": [], "report": [], "tell": [], "first": None, "last": None, "error": None}
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = make_storage(storage_kind, path)
        sampler = optuna.samplers.RandomSampler()
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler)
        barrier.wait()
        deadline = time.perf_counter() + timeout_s
        for _ in range(num_trials):
            if time.perf_counter() > deadline:
                break
            run_trial(study, log)
    except Exception as err:  # reported to the parent, which fails the run
        log["error"] = f"{type(err).__name__}: {err}"
    results.put(log)


def run_trial(study, log):
    started = time.perf_counter()
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.suggest_categorical("hidden_size", [64, 128, 256])
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("optimizer", ["adam", "sgd"])
    ask_end = time.perf_counter()
    value = simulated_accuracy(trial.number)
    trial.report(value, step=1)
    report_end = time.perf_counter()
    study.tell(trial, value)
    tell_end = time.perf_counter()
    if log["first"] is None:
        log["first"] = started
    log["last"] = tell_end
    log["ask"].append(ask_end - started)
    log["report"].append(report_end - ask_end)
    log["tell"].append(tell_end - report_end)


def simulated_accuracy(trial_number):
    """Return the same stand-in for a validation accuracy as the tunefleet bench."""
    return 0.5 + (trial_number % 100) / 200.0


def summarize(storage_kind, num_processes, num_planned, logs):
    # perf_counter reads CLOCK_MONOTONIC on Linux, which all processes share.
    first = min(log["first"] for log in logs if log["first"] is not None)
    last = max(log["last"] for log in logs if log["last"] is not None)
    wall_s = last - first
    ask = sorted(t for log in logs for t in log["ask"])
    report = [t for log in logs for t in log["report"]]
    tell = [t for log in logs for t in log["tell"]]
    num_trials = len(ask)
    ask_mean_ms = mean_ms(ask)
    report_mean_ms = mean_ms(report)
    tell_mean_ms = mean_ms(tell)
    return {
        "kind": "scheduler",
        "system": f"optuna {optuna.__version__} {storage_kind}",
        "concurrency": num_processes,
        "trials": num_trials,
        "trials_planned": num_planned,
        "wall_s": round(wall_s, 3),
        "trials_per_s": round(num_trials / wall_s, 1),
        "acquire_p50_ms": round(percentile_ms(ask, 50), 3),
        "acquire_p99_ms": round(percentile_ms(ask, 99), 3),
        "acquire_mean_ms": round(ask_mean_ms, 3),
        "report_mean_ms": round(report_mean_ms, 3),
        "complete_mean_ms": round(tell_mean_ms, 3),
        "overhead_ms": round(ask_mean_ms + report_mean_ms + tell_mean_ms, 3),
    }


def percentile_ms(sorted_seconds, pct):
    """Return the nearest-rank percentile, in milliseconds, as the tunefleet bench does."""
    rank = max(1, -(-pct * len(sorted_seconds) // 100))
    return sorted_seconds[int(rank) - 1] * 1e3


def mean_ms(seconds):
    return sum(seconds) / len(seconds) * 1e3


if __name__ == "__main__":
    main()
