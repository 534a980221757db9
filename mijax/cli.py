"""The ``mijax`` command: argument parsing and dispatch only; the work lives in the library.

Bad input ends with one line on stderr (``mijax: error: ...``) and exit status 2, before anything is
written or replaced; so does a failure of the work itself that mijax detects (a diverged training, samples
that are not finite). The environment refusing a write while the work runs (no space left on device, a
quota, a file too large for its file system, a read-only file system, an I/O error) ends with one line
naming the file (``mijax: error: no space left on device writing PATH``) and exit status 1: temporaries
removed, the files that were there before intact. Ctrl-C ends with ``mijax: interrupted`` and status 130, SIGTERM with ``mijax:
terminated`` and 143, their temporaries removed. Set ``MIJAX_DEBUG=1`` to see the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import warnings
from pathlib import Path

EXIT_USAGE = 2
EXIT_ENVIRONMENT = 1  # the operating system refused a write (mijax.io.WriteFailed) or another OSError
SEED_LIMIT = 2**32  # seeds are uint32 keys (mijax.keys): larger ones would wrap


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once: argparse's ``(default: ...)`` only where the help text does not already say
    it and the default is a value (not None, not an empty list, not a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or "(None:" in text or action.default in (None, False, [], argparse.SUPPRESS)
                or action.option_strings == []):
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, not argparse's usage dump
        raise UsageError(message)


def _floats(text: str) -> tuple[float, ...]:
    parts = text.replace(" ", "").split(",")
    if not text.strip() or any(p == "" for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers without empty items, got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"means must be finite, got {text!r}")
    return values


def _finite(name, low=None, high=None, low_open=False):
    """A parser of a finite float in [low, high] (low excluded with ``low_open``)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{name} must be <= {high:g}, got {text}")
        return value
    return parse


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON (a number, true/false, a list) or else as text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if isinstance(parsed, float) and not math.isfinite(parsed):
        raise argparse.ArgumentTypeError(f"{key} must be finite, got {value}")
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def _utf8_path(text: str) -> str:
    """A path given on the command line, as typed; one that is not valid UTF-8 (which the files mijax writes,
    e.g. ``config.json``, cannot name) is refused before any work."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("ascii", "backslashreplace")
        raise argparse.ArgumentTypeError(f"the path {shown!r} is not valid UTF-8; rename it or choose another") from None
    return text


def _path(text: str) -> Path:
    return Path(_utf8_path(text))


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be an integer, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seed must be in 0..{SEED_LIMIT - 1} (seeds are 32-bit), got {value}")
    return value


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {value}")
        return value
    return parse


def _add_train_arguments(p: argparse.ArgumentParser, resume: bool = True) -> None:
    from mijax import data
    from mijax.diffusion import OBJECTIVES
    from mijax.schedules import SCHEDULES

    p.add_argument("--dataset", required=True, help=f"one of {', '.join(data.names())}")
    p.add_argument("--modes", type=_floats, default=None, help="gaussian1d means, e.g. 1,2,3 (default 1,2,3)")
    p.add_argument("--std", type=_finite("std", 0, low_open=True), default=None,
                   help="std of every mode (None: the data set's, 0.05; 0.02 for gaussian8)")
    p.add_argument("--mnist-dir", type=_utf8_path, default=None, metavar="DIR",
                   help="--dataset mnist: your MNIST files (the four IDX files, gzipped or not, or an .npz); no "
                        "download ever happens (offline digits: --dataset digits8 or mnist5k)")
    p.add_argument("--data-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="any option of the data set, repeatable (e.g. --dataset shapes --data-option size=32); "
                        "`mijax data` lists them")
    from mijax import models
    from mijax.training import LR_DECAYS

    p.add_argument("--model", default="mlp", choices=models.names(),
                   help="the denoiser: mlp (the paper's toy network) or unet (the image UNet family)")
    p.add_argument("--model-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="any option of the model, repeatable (mlp: width, num_layers, tied; unet: channels, "
                        "mults, res_blocks, attn_levels, groups, dropout, conv=xla|onednn (oneDNN's convolutions "
                        "on CPU: pip install 'mijax[onednn]'); `mijax data` lists them)")
    p.add_argument("--n-train", type=_positive_int("n-train"), default=None,
                   help="training-set size (default: 20,000 in 1D, 100,000 in 2D, as published)")
    p.add_argument("--steps", type=_positive_int("steps"), default=None,
                   help="optimiser steps (default: 10,000 epochs = 10,000 N / batch)")
    p.add_argument("--batch-size", type=_positive_int("batch size"), default=10_000, help="training batch")
    p.add_argument("--lr", type=_finite("learning rate", 0, low_open=True), default=1e-3, help="Adam learning rate")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="ramp the learning rate linearly from 0 over this many steps (0: off, as published)")
    p.add_argument("--lr-decay", default="none", choices=LR_DECAYS,
                   help="lower the learning rate after the warm-up, down to --lr-final times its peak at the last "
                        "step (none: constant, as published)")
    p.add_argument("--lr-final", type=_finite("lr-final", 0), default=0.0,
                   help="with --lr-decay: the learning rate at the last step, as a fraction of --lr")
    p.add_argument("--grad-clip", type=_finite("gradient clipping", 0), default=0.0,
                   help="clip the gradient to this global norm (0: off, as published; image DDPMs: 1)")
    p.add_argument("--ema-decay", type=_finite("ema decay", 0), default=0.0,
                   help="sample with a moving average of the weights of this decay (0: off, as published; image "
                        "DDPMs: 0.9999). Dropout is a model option: --model unet --model-option dropout=0.1")
    p.add_argument("--t-power", type=_finite("t-power", 0, 10, low_open=True), default=1.0,
                   help="draw the loss's timesteps as floor(T u^P), u uniform: 1 is uniform t, as published; "
                        "above 1 small t come more often (sharper modes in fewer steps; the quick 2D and "
                        "recursive models: 1.5)")
    p.add_argument("--batch-groups", type=_positive_int("batch-groups"), default=1,
                   help="take each step's gradient as the mean of G equal groups of the batch, computed apart, each "
                        "group on its own device when a model's seeds leave devices free (a power of two dividing "
                        "the batch; the same numbers on any device count; for a device per core where one program "
                        "leaves cores idle). 1: one gradient over the batch, as published")
    p.add_argument("--shuffle", action="store_true", help="permute the training set every epoch "
                   "(the published code visits fixed batches in order)")
    p.add_argument("--timesteps", type=int, default=1000, help="diffusion steps T (at least 2: Hal needs two)")
    p.add_argument("--schedule", default="linear", help=f"beta schedule: {', '.join(SCHEDULES)}")
    p.add_argument("--beta-start", type=_finite("beta start", 0, low_open=True), default=1e-3,
                   help="first beta of the schedule")
    p.add_argument("--beta-end", type=_finite("beta end", 0, 1, low_open=True), default=0.2,
                   help="last beta of the schedule")
    p.add_argument("--objective", default="eps", choices=OBJECTIVES, help="what the network predicts")
    p.add_argument("--untied", action="store_true", help="three separate residual blocks (published: one, tied)")
    p.add_argument("--seeds", type=_positive_int("seeds"), default=1, help="models trained at once (vmapped)")
    p.add_argument("--seed", type=_seed, default=0, help="first seed; model s uses seed + s (32-bit)")
    p.add_argument("--checkpoint-every", type=_positive_int("checkpoint-every"), default=5_000,
                   help="optimiser steps between checkpoints")
    p.add_argument("--steps-per-call", type=_positive_int("steps per call"), default=200,
                   help="optimiser steps per jitted dispatch")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out made by mijax (once the new one is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, type=_path, help="output directory")
    _add_scale_arguments(p)


def _add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """Matmul precision and the jax.distributed settings of a multi-process (multi-host) run."""
    from mijax.models import PRECISIONS

    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="the network's matmuls (sampler arithmetic stays float32; None: float32, for "
                        "sample: the run's)")
    g = p.add_argument_group("many processes (jax.distributed; all processes run the same command)")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=_positive_int("num processes"), default=None, help="processes in the job")
    g.add_argument("--process-id", type=int, default=None, help="this process's rank, 0 .. num-processes - 1")
    g.add_argument("--distributed-auto", action="store_true",
                   help="detect the settings from the platform (Cloud TPU, SLURM, Open MPI)")


def _device_per_core(a) -> None:
    """The program's CPU backend as one device per core (:func:`mijax.distributed.use_cpu_cores`; same numbers,
    faster), unless the command joins a multi-process job, whose devices stay as they are; in every process
    XLA:CPU's own kernels, not YNNPACK's (:func:`mijax.distributed.use_xla_cpu_kernels`)."""
    from mijax import distributed

    distributed.use_xla_cpu_kernels()
    if any(getattr(a, name, None) for name in ("coordinator_address", "num_processes", "distributed_auto")):
        return
    distributed.use_cpu_cores()


def _init_distributed(a) -> None:
    from mijax import distributed

    try:
        distributed.initialize(a.coordinator_address, a.num_processes, a.process_id, auto=a.distributed_auto)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, type=_path, help="a run directory made by mijax train")
    p.add_argument("--n", type=_positive_int("n"), required=True, help="samples per seed")
    p.add_argument("--seed", type=_seed, default=0, help="sampling seed (32-bit)")
    from mijax.models import KERNELS
    from mijax.sampling import HAL_REDUCTIONS, SAMPLERS, VARIANCES

    p.add_argument("--kernel", default="xla", choices=KERNELS,
                   help="how the network runs: xla (default) or pallas (one fused kernel per block of rows on "
                        "a GPU; elsewhere the XLA path)")
    p.add_argument("--sampler", default="ddpm", choices=SAMPLERS, help="ancestral DDPM (published) or DDIM")
    p.add_argument("--variance", default=None, choices=VARIANCES,
                   help="DDPM only: the step variance (None: fixed_large, beta_t, as published)")
    p.add_argument("--ddim-steps", type=_positive_int("ddim steps"), default=None,
                   help="DDIM only: evenly spaced steps (None: all T)")
    p.add_argument("--eta", type=_finite("eta", 0), default=None, help="DDIM only: noise scale (None: 0)")
    p.add_argument("--hal-window", type=int, default=10, help="reverse steps in the Hal window (K)")
    p.add_argument("--hal-end", type=int, default=0, help="the window ends this many steps before the last")
    p.add_argument("--hal-reduction", default="mean", choices=HAL_REDUCTIONS,
                   help="how Hal reduces the per-coordinate variances: mean (published), max, top_k, region_max "
                        "(per region the mean, then the largest: the data set's regions, e.g. the SHAPES strips)")
    p.add_argument("--hal-top-k", type=_positive_int("hal top k"), default=None,
                   help="k of --hal-reduction top_k, the mean of the k largest per-pixel variances (None: 16)")
    p.add_argument("--clip-x0", action="store_true",
                   help="clip x0_hat to [-1, 1] at every step (image DDPMs; the toy recipe never clips)")
    from mijax.detectors import DETECTORS

    p.add_argument("--detectors", default=None,
                   help="more hallucination scores in the same pass, comma-separated, each NAME (window t = 9..0) "
                        "or NAME@END:LENGTH (lid@T0): " + ", ".join(DETECTORS) + "; the .npz gains score_<name> "
                        "[S, N] per detector (higher = more suspicious)")
    p.add_argument("--jac-probes", type=_positive_int("jac probes"), default=4,
                   help="Hutchinson probes of the Jacobian detectors on images (points get the exact Jacobian)")
    p.add_argument("--abort", default=None, metavar="DETECTOR@END:LENGTH",
                   help="abort and resample: at the end of this detector's window (END steps before the last) redraw "
                        "the samples scoring >= --abort-threshold from fresh noise; the .npz gains redraws and steps "
                        "[S, N] (one device, in memory)")
    p.add_argument("--abort-threshold", type=float, default=None, help="the --abort detector's threshold")
    p.add_argument("--max-redraws", type=int, default=None,
                   help="--abort: redraws per sample at most, the last kept (None: 3)")
    p.add_argument("--chunk-size", type=_positive_int("chunk size"), default=50_000, help="samples per compiled chunk")
    p.add_argument("--overwrite", action="store_true", help="replace an existing samples file made by mijax")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, type=_path,
                   help="output .npz: x [S, N, *shape] (points [S, N, d], images [S, N, H, W, C]), hal [S, N], "
                        "and the run, step and config it came from")
    _add_scale_arguments(p)


def _add_recursive_arguments(p: argparse.ArgumentParser) -> None:
    _add_train_arguments(p, resume=False)  # a study resumes by rerunning the same command
    p.add_argument("--generations", type=_positive_int("generations"), default=5, help="generations 0..G-1")
    p.add_argument("--filters", default="none,random,variance",
                   help="comma-separated, of none, random, variance, threshold")
    p.add_argument("--pool-extra", type=int, default=2_500, help="pool = N + this many samples (published: 2,500)")
    p.add_argument("--pool-ratio", type=_finite("pool ratio", 1), default=None, help="pool = ceil(N * ratio) instead")
    p.add_argument("--threshold-keep", type=_finite("threshold keep", 0, 1, low_open=True), default=None,
                   help="fraction of generation 0's pool the threshold filter keeps (default N / pool)")
    p.add_argument("--hal-window", type=int, default=10, help="reverse steps in the Hal window (K)")
    p.add_argument("--chunk-size", type=_positive_int("chunk size"), default=20_000, help="samples per compiled chunk")


def build_parser() -> argparse.ArgumentParser:
    from mijax.version import __version__

    parser = _Parser(prog="mijax", description="Hallucinations in diffusion models through mode interpolation.")
    parser.add_argument("--version", action="version", version=f"mijax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_arguments(sub.add_parser("train", help="train S models (seeds) of the paper's DDPM on a data set"))
    _add_sample_arguments(sub.add_parser("sample", help="sample a trained run, with Hal for every sample"))
    ev = sub.add_parser("eval", help="the hallucination rate of a samples file and how well Hal and each detector "
                                     "find them (AUROC, operating points), per seed and over seeds")
    ev.add_argument("samples", type=_path, help="a samples file (.npz) made by mijax sample or mijax demo")
    ev.add_argument("--json-out", type=_path, default=None, help="also write the full result as strict JSON here")
    ev.add_argument("--figures", type=_path, default=None, metavar="DIR",
                    help="also draw the ROC curves of every score (first seed) into this folder")
    sub.add_parser("data", help="list the registered data sets and models with their options and defaults")
    demo = sub.add_parser("demo", help="train, sample 50,000 points, report the hallucinations (~5 min on 2 CPUs)")
    demo.add_argument("--out", type=_path, default=Path("mijax-demo"), help="output directory")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo (once the new one is complete)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    exp = sub.add_parser("experiment", help="run one of the paper's experiments (or `all`); --list names them")
    exp.add_argument("name", nargs="?", help="experiment name, or `all`")
    exp.add_argument("--list", action="store_true", help="name the experiments, one line each")
    from mijax.experiments import PROFILES

    exp.add_argument("--profile", default="quick", choices=PROFILES,
                     help="quick: minutes on 2 CPU cores; paper: the paper's sizes (for a GPU)")
    exp.add_argument("--seeds", type=_positive_int("seeds"), default=None, help="seeds (None: the profile's)")
    exp.add_argument("--out", type=_path, default=None, help="output directory (all: one folder per experiment)")
    exp.add_argument("--overwrite", action="store_true",
                     help="replace a finished experiment made by mijax (once the new one is complete)")
    exp.add_argument("--runs", type=_path, default=None,
                     help="a folder of trained runs shared by experiments: one that trains the same configuration as "
                          "another reuses its models and samples (all: OUT/runs by default; one experiment: its own)")
    exp.add_argument("--set", type=_option, action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                     help="change one of the profile's sizes (repeatable; one experiment, not `all`), e.g. "
                          "--set steps=20000 --set num_samples=100000; the report lists the sizes used")
    exp.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_recursive_arguments(sub.add_parser("recursive", help="recursive training on generated data, with and "
                                            "without Hal filtering; rerun the same command to resume"))
    sub.add_parser("bench", help="throughput and memory of sampling and training (`mijax bench --help`)")
    return parser


def _run_config(a):
    """The RunConfig of the training options (train and recursive); data-set options go to the data set,
    which refuses those it does not take."""
    from mijax.config import DiffusionConfig, ModelConfig, RunConfig, data_config, paper_steps
    from mijax.training import TrainConfig

    _init_distributed(a)
    options = dict(a.data_option)
    options.update({name: value for name, value in (("modes", a.modes), ("std", a.std)) if value is not None})
    if a.mnist_dir is not None:
        if a.dataset != "mnist":
            raise UsageError("--mnist-dir applies to --dataset mnist only")
        options["path"] = a.mnist_dir
    data = data_config(a.dataset, a.n_train, **options)
    steps = a.steps if a.steps is not None else paper_steps(data.n_train, a.batch_size)
    return RunConfig(
        data=data,
        model=ModelConfig(a.model, precision=a.precision or "float32",
                          options={**dict(a.model_option), **({"tied": False} if a.untied else {})}),
        diffusion=DiffusionConfig(a.schedule, a.timesteps, a.beta_start, a.beta_end, a.objective),
        train=TrainConfig(steps=steps, batch_size=a.batch_size, learning_rate=a.lr, objective=a.objective,
                          shuffle=a.shuffle, steps_per_call=a.steps_per_call, warmup_steps=a.warmup_steps,
                          grad_clip=a.grad_clip, ema_decay=a.ema_decay,
                          lr_decay=a.lr_decay, lr_final=a.lr_final, t_power=a.t_power,
                          batch_groups=a.batch_groups),
        seed=a.seed, seeds=a.seeds, checkpoint_every=a.checkpoint_every)


def _train(a) -> None:
    from mijax.runs import train_run

    config = _run_config(a)
    train_run(a.out, config, resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress)
    print(f"trained {config.seeds} model(s) for {config.train.steps} steps -> {a.out}")


def _sample(a) -> None:
    from mijax.runs import sample_run
    from mijax.sampling import SamplerConfig

    if a.sampler == "ddpm" and (a.ddim_steps is not None or a.eta is not None):
        raise UsageError("--ddim-steps and --eta apply to --sampler ddim only")
    if a.sampler != "ddpm" and a.variance is not None:
        raise UsageError(f"--variance applies to --sampler ddpm only (--sampler {a.sampler} ignores it)")
    if a.hal_top_k is not None and a.hal_reduction != "top_k":
        raise UsageError(f"--hal-top-k applies to --hal-reduction top_k only (--hal-reduction {a.hal_reduction} "
                         "ignores it)")
    if a.out is not None and a.out.suffix != ".npz":
        raise UsageError(f"--out {a.out}: samples are an .npz file; name it with the suffix .npz")
    _init_distributed(a)
    sampler = dict(sampler=a.sampler, variance=a.variance or "fixed_large", hal_window=a.hal_window, hal_end=a.hal_end,
                   ddim_steps=a.ddim_steps, eta=0.0 if a.eta is None else a.eta, hal_reduction=a.hal_reduction,
                   hal_top_k=16 if a.hal_top_k is None else a.hal_top_k, clip_x0=a.clip_x0, jac_probes=a.jac_probes)
    from mijax.detectors import parse

    if a.detectors is not None:
        try:
            sampler["detectors"] = parse(a.detectors)
        except ValueError as e:
            raise UsageError(f"--detectors: {e}") from None
    abort = None
    if (a.abort is None) != (a.abort_threshold is None):
        raise UsageError("--abort and --abort-threshold go together")
    if a.abort is None and a.max_redraws is not None:
        raise UsageError("--max-redraws applies to --abort only")
    if a.max_redraws is None:
        a.max_redraws = 3
    if a.abort is not None:
        from mijax.abort import AbortConfig

        try:
            specs = parse(a.abort)
        except ValueError as e:
            raise UsageError(f"--abort: {e}") from None
        if len(specs) != 1:
            raise UsageError("--abort takes one detector")
        spec = specs[0]
        if a.max_redraws < 0:
            raise UsageError(f"--max-redraws must be >= 0, got {a.max_redraws}")
        abort = AbortConfig(spec, a.abort_threshold, a.max_redraws)
    result = sample_run(a.run, a.n, seed=a.seed, sampler=SamplerConfig(**sampler), chunk_size=a.chunk_size,
                        progress=not a.no_progress, out=a.out, precision=a.precision, kernel=a.kernel,
                        overwrite=a.overwrite, abort=abort)
    import jax

    if jax.process_index() == 0:
        print(f"{result['shape'][0]} seed(s) x {a.n} samples -> {a.out}")
        from mijax import evaluation

        print(evaluation.format_summary(evaluation.evaluate(evaluation.load_samples(a.out))))


def _eval(a) -> None:
    from mijax import evaluation, outputs
    from mijax.io import write_json

    if a.json_out is not None:
        outputs.check_writable(a.json_out)
    samples = evaluation.load_samples(a.samples)
    result = evaluation.evaluate(samples)
    print(evaluation.format_summary(result))
    if a.json_out is not None:
        write_json(a.json_out, {"samples": str(a.samples), "run": samples["run"], "step": samples["step"], **result})
        print(f"-> {a.json_out}")
    if a.figures is not None:
        for path in evaluation.plot_evaluation(samples, result, a.figures):
            print(f"-> {path}")


def _demo(a) -> None:
    from mijax.experiments.demo import run_demo

    run_demo(a.out, overwrite=a.overwrite, progress=not a.no_progress)


def _experiment(a) -> None:
    from mijax import experiments

    if a.list:
        for name in experiments.names():
            print(f"{name:16s} {experiments.load(name).SUMMARY}")
        return
    if a.name is None:
        raise UsageError("name an experiment (or `all`), or pass --list")
    if a.out is None:
        raise UsageError("--out is required")
    chosen = experiments.names() if a.name == "all" else [a.name]
    modules = {name: experiments.load(name) for name in chosen}  # unknown names fail before any work
    from mijax.experiments import common

    a.overrides = _experiment_overrides(a, modules)

    runs = a.runs if a.runs is not None else (a.out / "runs" if a.name == "all" else None)
    with (common.shared_runs(runs) if runs is not None else contextlib.nullcontext()):
        _run_experiments(a, modules)


def _run_experiments(a, modules) -> None:
    from mijax import outputs

    with outputs.lock(a.out if a.name == "all" else None):
        if a.name == "all":
            outputs.check(a.out, "experiments", resume=True)
            outputs.mark(a.out, "experiments")
        for name, module in modules.items():
            out = a.out / name if a.name == "all" else a.out
            with outputs.lock(out):
                finished = (out / "metrics.json").exists()
                if finished and not a.overwrite:
                    if a.name == "all":
                        print(f"{name}: finished earlier in {out}, skipped (--overwrite reruns it)")
                        continue
                    raise UsageError(f"{out} holds a finished experiment; pass --overwrite to rerun it")
                outputs.check(out, "experiment", overwrite=a.overwrite, resume=not finished)
                print(f"== {name} ({a.profile}) -> {out}")
                with outputs.replacing(out, "experiment", replace=finished) as target:
                    module.run(target, profile=a.profile, seeds=a.seeds, progress=not a.no_progress,
                               overrides=a.overrides or None)


def _experiment_overrides(a, modules) -> dict:
    """``--set KEY=VALUE`` as a dict, checked against the chosen profile's sizes before any work: known keys,
    values of the profile's type (an int where it has an int; a number where it has a float)."""
    overrides = dict(getattr(a, "overrides", None) or [])
    if not overrides:
        return {}
    if a.name == "all":
        raise UsageError("--set changes one experiment's sizes; name the experiment, not `all`")
    (name, module), = modules.items()
    if not hasattr(module, "PROFILES") or not getattr(module, "SETS_SIZES", True):
        raise UsageError(f"{name} has no profile sizes to --set; `mijax recursive` sets every size of such a study")
    sizes = module.PROFILES[a.profile]
    for key, value in overrides.items():
        if key == "seeds":
            raise UsageError("--set seeds=...: use --seeds")
        if key not in sizes:
            raise UsageError(f"--set {key}: {name}'s {a.profile} profile has no such size; it has "
                             f"{', '.join(k for k in sizes if k != 'seeds')}")
        want = sizes[key]
        # the profile's own type; an int also does for a float (a bool, an int in Python, for neither)
        kinds = (int, float) if isinstance(want, float) else (type(want),)
        ok = isinstance(value, kinds) and (isinstance(value, bool) == isinstance(want, bool))
        if not ok:
            raise UsageError(f"--set {key}={value!r}: expected {type(want).__name__} like {want!r}")
        if isinstance(want, float):
            overrides[key] = float(value)
        elif isinstance(value, tuple):  # JSON's nested lists as the profile's nested tuples, e.g. windows
            overrides[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return overrides


def _recursive(a) -> None:
    from mijax.recursive import RecursiveConfig, run_recursive
    from mijax.stats import format_ci

    config = RecursiveConfig(run=_run_config(a), generations=a.generations,
                             filters=tuple(f for f in a.filters.replace(" ", "").split(",") if f),
                             pool_extra=a.pool_extra, pool_ratio=a.pool_ratio, threshold_keep=a.threshold_keep,
                             hal_window=a.hal_window, chunk_size=a.chunk_size)
    result = run_recursive(a.out, config, progress=not a.no_progress, overwrite=a.overwrite)
    for name, table in result["summary"].items():
        key = next(iter(table))  # the data set's first summary measurement (mixtures: the hallucination rate)
        values = ", ".join(format_ci(c, 100.0, 3, "%") if "rate" in key else format_ci(c) for c in table[key])
        print(f"{name:9s} {key} per generation: {values}")
    print(f"-> {a.out}/metrics.json")


def _bench(argv) -> None:
    """``mijax bench``: the benchmark harness of a source checkout (``benchmarks/bench.py`` beside the ``mijax``
    package; it is not installed with the package, and the library never imports it)."""
    import importlib

    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "bench.py").is_file():
        raise UsageError("mijax bench runs the benchmarks of a source checkout (benchmarks/bench.py), which this "
                         "installation has not; clone the repository and pip install -e . there")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.import_module("benchmarks.bench").main(argv, parser_class=_Parser)


def _data(a) -> None:
    from mijax import data, models
    from mijax.io import option_text

    for name in data.names():
        e = data.entry(name)
        options = ", ".join(f"{k}={option_text(v)}" for k, v in e.options.items())
        print(f"data set {name:20s} n_train={e.n_train:,}; {options}\n    {e.summary}")
    for name in models.names():
        options = ", ".join(f"{k}={option_text(v)}" for k, v in models.resolve(name).items())
        print(f"model    {name:20s} {options}")


COMMANDS = {"train": _train, "sample": _sample, "eval": _eval, "demo": _demo, "experiment": _experiment, "recursive": _recursive,
            "data": _data}


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"mijax: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def main(argv=None) -> int:
    """Run ``mijax ARGV`` (default ``sys.argv[1:]``); returns the exit status.

    Called as the program (no ``argv``), it first starts itself again with an allocator that keeps XLA:CPU's
    buffers (mimalloc, or glibc's huge pages) where that helps (:func:`mijax.allocator.restart_with_allocator`),
    and an interrupt ends the process at once with ``os._exit`` after its temporaries are removed: the
    interpreter's teardown with accelerator threads still running was what crashed (status 139) after Ctrl-C.
    """
    as_program = argv is None
    if as_program:  # first: it may start the program again (mijax.allocator)
        from mijax import allocator

        try:
            allocator.restart_with_allocator()
        except ValueError as e:  # a bad MIJAX_MALLOC: the one-line error, before anything runs
            print(f"mijax: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    from mijax import signals

    argv = sys.argv[1:] if argv is None else list(argv)
    show = warnings.showwarning
    if as_program:  # a library caller (or a test) keeps its own warning handling
        warnings.showwarning = _one_line_warning
    try:
        with signals.installed():
            if as_program:  # a Ctrl-C held back across the restart arrives now, to the handler
                allocator.release_signals()
            if argv[:1] == ["bench"]:  # the benchmark parses its own options
                if as_program:
                    _device_per_core(None)
                _bench(argv[1:])
                return 0
            args = build_parser().parse_args(argv)
            if as_program:
                _device_per_core(args)
            COMMANDS[args.command](args)
    except (UsageError, ValueError) as e:
        if os.environ.get("MIJAX_DEBUG"):
            raise
        print(f"mijax: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except (AssertionError, RuntimeError):
        line = _backend_failure()
        if line is None or os.environ.get("MIJAX_DEBUG"):
            raise
        print(f"mijax: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if os.environ.get("MIJAX_DEBUG"):
            raise
        print(f"mijax: error: {_os_error_line(e)}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except (KeyboardInterrupt, signals.Interrupted) as e:
        if getattr(e, "signum", signal.SIGINT) == signal.SIGTERM:
            return _stop("mijax: terminated", 143, as_program)
        return _stop("mijax: interrupted", 130, as_program)
    finally:
        warnings.showwarning = show
    return 0


def _backend_failure():
    """One line if JAX failed to start the backends that ``JAX_PLATFORMS`` names (None otherwise): the platform
    asked for and those installed here."""
    wanted = os.environ.get("JAX_PLATFORMS", "").strip()
    if not wanted or "jax" not in sys.modules:
        return None
    try:
        from jax._src import xla_bridge

        if getattr(xla_bridge, "_default_backend", True) is not None:
            return None  # the backends started: the error is another one
    except ImportError:
        return None
    import importlib.util

    installed = ["cpu"] + [name for name, modules in (
        ("cuda", ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_cuda12_pjrt", "jax_cuda13_pjrt")),
        ("rocm", ("jax_rocm60_plugin", "jax_rocm7_plugin")), ("tpu", ("libtpu",)))
        if any(importlib.util.find_spec(m) is not None for m in modules)]
    return (f"JAX has no {wanted} backend here (installed: {', '.join(installed)}); unset JAX_PLATFORMS or set it "
            "to an installed one")


def _os_error_line(e: OSError) -> str:
    """One line for an OSError that reached the command: a :class:`mijax.io.WriteFailed` says itself; another names
    what the system said and the file."""
    from mijax.io import WRITE_ERRORS, WriteFailed

    if isinstance(e, WriteFailed):
        return str(e)
    what = WRITE_ERRORS.get(e.errno) or (e.strerror or type(e).__name__)
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return f"{what}{where}".splitlines()[0]


def _stop(message: str, status: int, as_program: bool) -> int:
    print(message, file=sys.stderr)
    if as_program:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
