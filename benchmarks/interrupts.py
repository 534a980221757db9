"""Ctrl-C at random moments: ``mijax train``, ``sample`` and ``recursive``, each interrupted R times.

Each run starts the command in a fresh process, waits a random time (uniform over ``--window`` seconds after
the start, so some land during start-up and compilation, some in the middle of the work), sends SIGINT, and
records the exit status, whether stderr is the one line ``mijax: interrupted``, and whether any temporary
(``.NAME.mijax-PID-...``) or half-written file was left. Any status other than 130 (a segfault is 139)
fails the check.

    python -m benchmarks.interrupts --out /tmp/interrupts --repeats 10
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

TINY = ["--dataset", "gaussian1d", "--modes", "1,2", "--n-train", "2000", "--batch-size", "500", "--timesteps", "100",
        "--steps-per-call", "20", "--checkpoint-every", "40", "--no-progress"]


def commands(work: Path) -> dict[str, list[str]]:
    run = work / "trained"
    return {
        "train": ["train", *TINY, "--steps", "100000", "--seeds", "2", "--overwrite",
                  "--out", str(work / "train-out")],
        "sample": ["sample", "--run", str(run), "--n", "2000000", "--chunk-size", "4096", "--no-progress",
                   "--overwrite", "--out", str(work / "samples.npz")],
        "recursive": ["recursive", *TINY, "--steps", "4000", "--generations", "3", "--filters", "none,variance",
                      "--pool-extra", "500", "--chunk-size", "1024", "--overwrite", "--out", str(work / "study")],
    }


def leftovers(work: Path) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob("*") if ".mijax-" in p.name)


def once(argv: list[str], delay: float, work: Path) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "mijax.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=work)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    return {"delay": round(delay, 2), "status": proc.returncode, "one_line": lines == ["mijax: interrupted"],
            "stderr_tail": lines[-3:], "leftovers": leftovers(work)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (created)")
    p.add_argument("--repeats", type=int, default=10, help="interrupts per command")
    p.add_argument("--window", type=float, default=12.0, help="send SIGINT at a uniform time in 1..window seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    a = p.parse_args(argv)
    work = a.out
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "trained" / "train.json").exists():
        subprocess.run([sys.executable, "-m", "mijax.cli", "train", *TINY, "--steps", "40", "--out",
                        str(work / "trained"), "--overwrite"], check=True, cwd=work)
    rng = random.Random(a.seed)
    results = {}
    for name, argv_ in commands(work).items():
        rows = []
        for _ in range(a.repeats):
            rows.append(once(argv_, rng.uniform(1.0, a.window), work))
            print(name, rows[-1], flush=True)
        results[name] = {"runs": rows, "all_130": all(r["status"] == 130 for r in rows),
                         "all_one_line": all(r["one_line"] for r in rows),
                         "no_leftovers": all(not r["leftovers"] for r in rows)}
    (work / "interrupts.json").write_text(json.dumps(results, indent=2))
    ok = all(r["all_130"] and r["all_one_line"] and r["no_leftovers"] for r in results.values())
    print("all interrupts clean" if ok else "SOME INTERRUPTS WERE NOT CLEAN", flush=True)
    return results


if __name__ == "__main__":
    main()
