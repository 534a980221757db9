"""Issue 15's loan of the GPU machine, in parts, each a subprocess under its own time limit.

Parts, most important first (``--parts``, comma-separated):

* ``check``: ``benchmarks.gpu_check`` (the fused kernel against XLA, 10^6 and 10^7 samples with Hal,
  training against the published code, 16 seeds against one);
* ``unet``: ``mijax bench --images`` with the paper family's UNet (64 x 64, C = 64, mults 1,2,2,2, 2 res
  blocks, 32 groups, attention at level 2, dropout 0.1, batch 128) beside ``torch_unet.py`` on the device;
* ``grid``: ``mijax experiment grid-2d --profile paper`` (N = 100,000, batch 10,000, 4 seeds vmapped, 10^6
  samples per seed) with as many training steps as fit in ``--grid-seconds``, sized from ``check``'s
  measured step time when it ran earlier on the same machine;
* ``detection``: ``mijax experiment detection --profile paper`` (Hal's detection numbers, 1D and the grid;
  the grid's models are ``grid``'s, trained once, through a shared ``--runs`` folder);
* ``shapes``: ``mijax experiment shapes --profile paper`` with one seed and as many steps as fit in
  ``--shapes-seconds`` (sized from ``unet``'s step time), few samples.

Every part's log and JSON land in ``--out`` (the device tool's ``$OUT``: at most 8 files come back, so an
experiment's folder and its log come back as one ``.tar.gz``; all five parts make 7 files) and in
``--state`` (kept between calls while the machine stays warm). A part that runs past its limit is killed and the next one starts.

    PYTHONPATH=. python3 -m benchmarks.gpu_session --out $OUT --parts check,unet
    PYTHONPATH=. python3 -m benchmarks.gpu_session --out $OUT --parts grid,shapes
    python -m benchmarks.gpu_session --out /tmp/s --parts grid,shapes --local   # tiny sizes, any machine
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Optional, Sequence

PAPER_UNET = ("size=64,channels=64,mults=1:2:2:2,res_blocks=2,groups=32,attn_levels=2,dropout=0.1,batch=128,"
              "steps=20,n=128,timesteps=100,window=10")
LOCAL_UNET = "size=8,channels=8,mults=1,res_blocks=1,groups=4,attn_levels=0,dropout=0.1,batch=4,steps=2,n=4,timesteps=4,window=2"


def _run(name: str, command: Sequence[str], limit: float, out: Optional[Path], state: Path) -> int:
    """Run ``command`` with its output in ``state/NAME.log`` (copied to ``out`` unless None); kill it after
    ``limit`` seconds."""
    start = time.perf_counter()
    print(f"=== {name}: {' '.join(command)} (limit {limit:.0f} s)", flush=True)
    log = state / f"{name}.log"
    with open(log, "w") as f:
        try:
            rc = subprocess.run(list(command), stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    if out is not None:
        shutil.copy(log, out / log.name)
    tail = log.read_text(errors="replace").splitlines()[-30:]
    print("\n".join(tail))
    print(f"=== {name}: rc {rc} after {time.perf_counter() - start:.0f} s", flush=True)
    return rc


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _grid_steps(state: Path, seconds: float, local: bool) -> int:
    """Training steps for each of the grid's two data sets: 2 x steps x (ms per step of 4 vmapped seeds, from
    ``check``'s 1- and 16-seed figures, plus 30% for checkpoints and the host loop) <= 0.55 x ``seconds``."""
    if local:
        return 200
    check = _json(state / "gpu_check.json")
    one = ((check.get("training") or {}).get("mijax") or [{}])[0].get("ms_per_step")
    many = (check.get("seeds") or {}).get("training_many", {})
    if many.get("ms_per_step") and many.get("num_seeds"):
        ms = max(one or 0.0, many["ms_per_step"] * 4 / many["num_seeds"])
    else:  # 4 seeds ~ 4/16 of 16 seeds' step: 1.46 ms on the H200 (BENCHMARKS.md), with the machine gone cold
        ms = max(one or 0.0, 1.5)
    steps = int(0.55 * seconds / 2 / (1.3 * ms / 1e3))  # 1.3: checkpoints, data, the host loop
    return max(1_000, min(100_000, steps // 1_000 * 1_000))


def _shapes_steps(state: Path, seconds: float, local: bool) -> int:
    if local:
        return 100
    unet = _json(state / "unet.json").get("images", {})
    ms = (unet.get("training") or {}).get("ms_per_step") or 40.6  # the paper-family UNet's step on the H200
    steps = int(0.5 * seconds / (1.2 * ms / 1e3))
    return max(100, min(50_000, steps // 100 * 100))


def _pack(folder: Path, target: Path, log: Optional[Path] = None) -> None:
    """``folder``'s report, metrics and figures (no checkpoints or samples), and ``log``, as one .tar.gz (the
    device tool brings back 8 files at most)."""
    with tarfile.open(target, "w:gz") as tar:
        if log is not None and log.is_file():
            tar.add(log, arcname=log.name)
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".md", ".json", ".png") and "checkpoints" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(folder.parent)))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the device tool's $OUT")
    parser.add_argument("--state", type=Path, default=Path("/tmp/mijax_gpu_session"),
                        help="kept between calls on a warm machine (runs, logs, JSON)")
    parser.add_argument("--parts", default="check,unet", help="check, unet, grid, detection, shapes (comma-separated)")
    parser.add_argument("--baselines", type=Path, default=Path(".device"), help="torch_ddpm.py and torch_unet.py")
    parser.add_argument("--check-budget", type=float, default=220.0, help="gpu_check's --budget (s)")
    parser.add_argument("--grid-seconds", type=float, default=170.0)
    parser.add_argument("--detection-seconds", type=float, default=150.0, help="its limit (s)")
    parser.add_argument("--shapes-seconds", type=float, default=150.0)
    parser.add_argument("--no-kernel", action="store_true", help="check: XLA only (gpu_check --no-kernel)")
    parser.add_argument("--check-only", default="", help="check: these measurements only (gpu_check --only)")
    parser.add_argument("--local", action="store_true", help="tiny sizes and quick profiles (checks the script)")
    a = parser.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    a.state.mkdir(parents=True, exist_ok=True)
    # progress bars into the logs (every 5 s): a part killed at its limit shows where it was (on the second
    # H200 loan, detection and shapes ran past theirs with nothing to say how far they had come)
    py, env = sys.executable, dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="5")
    os.environ.update(env)
    profile = "quick" if a.local else "paper"
    for part in [p for p in a.parts.split(",") if p]:
        if part == "check":
            _run("check", [py, "-m", "benchmarks.gpu_check", "--out", str(a.state), "--budget", str(a.check_budget),
                           "--torch-baseline", str(a.baselines / "torch_ddpm.py")]
                 + (["--quick", "--interpret"] if a.local else []) + (["--no-kernel"] if a.no_kernel else [])
                 + (["--only", a.check_only] if a.check_only else []),
                 a.check_budget + 120, a.out, a.state)
            if (a.state / "gpu_check.json").exists():
                shutil.copy(a.state / "gpu_check.json", a.out / "gpu_check.json")
        elif part == "unet":
            _run("unet", [py, "-m", "mijax.cli", "bench", "--images", "--compare-torch", "--repeats", "2",
                          "--torch-baseline", str(a.baselines / "torch_unet.py"), "--image-options",
                          LOCAL_UNET if a.local else PAPER_UNET, "--json-out", str(a.state / "unet.json")],
                 60 if a.local else 150, a.out, a.state)
            if (a.state / "unet.json").exists():
                shutil.copy(a.state / "unet.json", a.out / "unet.json")
        elif part in ("grid", "detection"):
            # detection trains the same 2D model as grid-2d (shared --runs: trained once) and a 1D one.
            steps = _grid_steps(a.state, a.grid_seconds, a.local)
            chunk = 2_000 if a.local else 1_000_000  # the paper profile's 10^6 samples per seed in one chunk
            name, sizes = ("grid-2d", {"steps": steps}) if part == "grid" else (
                "detection", {"steps": min(steps, 200 if a.local else 20_000), "steps_2d": steps})
            sizes.update({"chunk_size": chunk, **({"num_samples": 2_000} if a.local else {})})
            run = a.state / name
            _run(part, [py, "-m", "mijax.cli", "experiment", name, "--profile", profile, "--out",
                        str(run), "--overwrite", "--runs", str(a.state / "runs")]
                 + [x for k, v in sizes.items() for x in ("--set", f"{k}={v}")],
                 a.grid_seconds + 60 if part == "grid" else a.detection_seconds, None, a.state)
            _pack(run, a.out / f"{name}.tar.gz", a.state / f"{part}.log")
        elif part == "shapes":
            steps, run = _shapes_steps(a.state, a.shapes_seconds, a.local), a.state / "shapes"
            sizes = {"steps": steps, "warmup_steps": min(steps // 10, 5_000), "steps_per_call": 100,
                     "num_samples": 64 if a.local else 256, "chunk_size": 64 if a.local else 256}
            _run("shapes", [py, "-m", "mijax.cli", "experiment", "shapes", "--profile", profile, "--seeds", "1",
                            "--out", str(run), "--overwrite"]
                 + [x for k, v in sizes.items() for x in ("--set", f"{k}={v}")], a.shapes_seconds + 60, None, a.state)
            _pack(run, a.out / "shapes.tar.gz", a.state / "shapes.log")
        else:
            raise SystemExit(f"unknown part {part!r}; the parts are check, unet, grid, detection, shapes")


if __name__ == "__main__":
    main()
