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
EXIT_ENVIRONMENT = 1  # the operating system refused a write (mijax.store.WriteFailed) or another OSError
DEMO_OUT = "mijax-demo"  # where `mijax demo` writes unless --out says


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


def _field_parser(hint, option: str, infinite: bool = False):
    """Reads an option's text as the config field's type (``hint``: int, float, str, a tuple of them, Optional);
    ranges are the configuration's to check (:mod:`mijax.config`), so every message names the field."""
    import typing

    if typing.get_origin(hint) is typing.Union:
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is tuple:
        item = _field_parser(typing.get_args(hint)[0], option)
        return lambda text: tuple(item(part) for part in text.replace(" ", "").split(",") if part)

    def parse(text):
        if hint is str:
            return text
        try:
            value = hint(text)
        except ValueError:
            wanted = "an integer" if hint is int else "a number"
            raise argparse.ArgumentTypeError(f"--{option} must be {wanted}, got {text!r}") from None
        if hint is float and not (math.isfinite(value) or (infinite and not math.isnan(value))):
            raise argparse.ArgumentTypeError(f"--{option} must be finite, got {text}")
        return value
    return parse


def _add_fields(p: argparse.ArgumentParser, cls, section: str, names, help=None, required=()) -> None:
    """One option per field of configuration ``cls`` in ``names``, derived from the field: its name (or the
    field's ``option``), type, help text and default (shown, never set: an option not given is None, so the
    configuration's own default applies, or on resume the run's). Values land in ``section.field`` dests; ``help``
    replaces a field's help text here (then it says the default itself); ``required`` names the options that
    must be given."""
    import dataclasses
    import typing

    from mijax import config as config_lib
    from mijax.registry import option_text

    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = config_lib.field_types(cls)
    for name in names:
        f = fields[name]
        m = f.metadata
        option = (m.get("option") or name).replace("_", "-")
        text = (help or {}).get(name) or m["help"]
        choices = m.get("choices")
        choices = choices() if callable(choices) else choices
        has_default = f.default is not dataclasses.MISSING
        if has_default and f.default is not None and f.default is not False and name not in (help or {}):
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else option_text(f.default)
            text += f" (default: {shown})"
        dest = f"{section}.{name}"
        if hints[name] is bool:
            p.add_argument(f"--{option}", action="store_true", default=None, dest=dest, help=text)
            continue
        kind = next((h for h in typing.get_args(hints[name]) if h is not type(None)), hints[name])
        metavar = ("{" + ",".join(choices) + "}" if choices and kind is str else
                   "NAME,..." if typing.get_origin(kind) is tuple else name.upper())
        p.add_argument(f"--{option}", type=_field_parser(hints[name], option, m.get("infinite", False)),
                       default=None, dest=dest, metavar=metavar, help=text, required=name in required)


def _given(a, section: str) -> dict:
    """The options of ``section`` given on the command line: {field: value}."""
    prefix = section + "."
    return {key[len(prefix):]: value for key, value in vars(a).items()
            if key.startswith(prefix) and value is not None}


def _config(build, *args, **kwargs):
    """``build(*args, **kwargs)``, a configuration; its ConfigError becomes a usage error naming the option."""
    import dataclasses

    from mijax import config

    try:
        return build(*args, **kwargs)
    except config.ConfigError as e:
        section, _, name = e.field.rpartition(".")
        owner = {cls.SECTION: cls for cls in (config.RunConfig, config.DataConfig, config.ModelConfig,
                 config.DiffusionConfig, config.TrainConfig, config.SamplerConfig, config.AbortConfig,
                 config.SampleConfig, config.RecursiveConfig)}.get(section)
        fields = {f.name: f for f in dataclasses.fields(owner)} if owner is not None else {}
        if name not in fields:
            raise UsageError(str(e)) from None
        option = (fields[name].metadata.get("option") or name).replace("_", "-")
        raise UsageError(f"--{option}: {e}") from None


TRAIN_FIELDS = ("steps", "batch_size", "learning_rate", "warmup_steps", "lr_decay", "lr_final", "grad_clip",
                "ema_decay", "t_power", "batch_groups", "smoothness", "smoothness_rows", "min_snr", "shuffle",
                "steps_per_call")


def _add_train_arguments(p: argparse.ArgumentParser, resume: bool = True) -> None:
    from mijax import config

    p.add_argument("--config", type=_path, default=None, metavar="RUN_OR_JSON",
                   help="start from the configuration of this run directory (or config.json); the options given "
                        "change it")
    p.add_argument("--dataset", default=None, help="one of " + ", ".join(config.DataConfig.__dataclass_fields__[
                   "dataset"].metadata["choices"]()) + " (required unless --config or --resume gives it)")
    p.add_argument("--modes", type=_floats, default=None, help="gaussian1d means, e.g. 1,2,3 (default 1,2,3)")
    p.add_argument("--std", type=_finite("std", 0, low_open=True), default=None,
                   help="std of every mode (None: the data set's, 0.05; 0.02 for gaussian8)")
    p.add_argument("--mnist-dir", type=_utf8_path, default=None, metavar="DIR",
                   help="--dataset mnist: your MNIST files (the four IDX files, gzipped or not, or an .npz); no "
                        "download ever happens (offline digits: --dataset digits8 or mnist5k)")
    p.add_argument("--data-option", type=_option, action="append", default=None, metavar="KEY=VALUE",
                   help="any option of the data set, repeatable (e.g. --dataset shapes --data-option size=32); "
                        "`mijax data` lists them")
    _add_fields(p, config.DataConfig, "data", ("n_train",),
                help={"n_train": "training-set size (None: the data set's, 20,000 in 1D, 100,000 in 2D, as "
                                 "published)"})
    _add_fields(p, config.ModelConfig, "model", ("name",),
                help={"name": "the denoiser: mlp (the paper's toy network, the default) or unet (the image UNet "
                              "family)"})
    p.add_argument("--model-option", type=_option, action="append", default=None, metavar="KEY=VALUE",
                   help="any option of the model, repeatable (mlp: width, num_layers, tied; unet: channels, "
                        "mults, res_blocks, attn_levels, groups, dropout, conv=xla|onednn (oneDNN's convolutions "
                        "on CPU: pip install 'mijax[onednn]'); `mijax data` lists them)")
    p.add_argument("--untied", action="store_true", help="three separate residual blocks (published: one, tied)")
    _add_fields(p, config.TrainConfig, "train", TRAIN_FIELDS,
                help={"steps": "optimiser steps (None: 10,000 epochs = 10,000 N / batch, as published)"})
    _add_fields(p, config.DiffusionConfig, "diffusion", ("timesteps", "schedule", "beta_start", "beta_end",
                                                          "objective"))
    _add_fields(p, config.RunConfig, "run", ("seeds", "seed", "checkpoint_every"))
    if resume:
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint (its own configuration; an option "
                            "given must agree with it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out made by mijax (once the new one is complete)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, type=_path, help="output directory")
    _add_fields(p, config.ModelConfig, "model", ("precision",))
    _add_distributed_arguments(p)


def _add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    """The jax.distributed settings of a multi-process (multi-host) run."""
    g = p.add_argument_group("many processes (jax.distributed; all processes run the same command)")
    g.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=_positive_int("num processes"), default=None, help="processes in the job")
    g.add_argument("--process-id", type=int, default=None, help="this process's rank, 0 .. num-processes - 1")
    g.add_argument("--distributed-auto", action="store_true",
                   help="detect the settings from the platform (Cloud TPU, SLURM, Open MPI)")


def _device_per_core(argv) -> None:
    """The program's CPU backend as one device per core (:func:`mijax.execution.use_cpu_cores`; same numbers,
    faster), unless the command (``argv``) joins a multi-process job, whose devices stay as they are; in every
    process XLA:CPU's own kernels, not YNNPACK's (:func:`mijax.execution.use_xla_cpu_kernels`). Called before
    the options are parsed: building the parser must not be what starts JAX."""
    from mijax import execution

    execution.use_xla_cpu_kernels()
    joins = ("--coordinator-address", "--num-processes", "--distributed-auto")
    if any(arg.split("=", 1)[0] in joins for arg in argv):
        return
    execution.use_cpu_cores()


def _init_distributed(a) -> None:
    from mijax import execution

    try:
        execution.initialize(a.coordinator_address, a.num_processes, a.process_id, auto=a.distributed_auto)
    except ValueError as e:
        raise UsageError(str(e)) from None


FIGURES_HELP = ("also draw the first seed's samples (samples.png: the histogram or scatter of a mixture, a labelled "
                "grid of images: in support and hallucinated) and the ROC curves of every score (roc.png) into this "
                "folder")


# The options of the reverse sampler (mijax sample, recursive and experiment) and of Hal (sample, recursive), each a
# field of SamplerConfig.
HAL_FIELDS = ("hal_window", "hal_end", "hal_reduction", "hal_top_k", "clip_x0")


def _add_sample_arguments(p: argparse.ArgumentParser) -> None:
    from mijax import config
    from mijax.detectors import DETECTORS

    p.add_argument("--run", required=True, type=_path, help="a run directory made by mijax train")
    _add_fields(p, config.SampleConfig, "sample", ("n", "seed", "kernel", "chunk_size", "precision"),
                required=("n",))
    _add_fields(p, config.SamplerConfig, "sampler", config.SamplerConfig.CHOICE + HAL_FIELDS + ("jac_probes",))
    p.add_argument("--detectors", default=None,
                   help="more hallucination scores in the same pass, comma-separated, each NAME (window t = 9..0) "
                        "or NAME@END:LENGTH (lid@T0): " + ", ".join(DETECTORS) + "; the .npz gains score_<name> "
                        "[S, N] per detector (higher = more suspicious)")
    p.add_argument("--abort", default=None, metavar="DETECTOR@END:LENGTH",
                   help="abort and resample: at the end of this detector's window (END steps before the last) redraw "
                        "the samples scoring >= --abort-threshold (or a threshold certified for "
                        "--abort-target-rate) from fresh noise; the .npz gains redraws and steps [S, N] (one device, "
                        "in memory)")
    _add_fields(p, config.AbortConfig, "abort", ("threshold", "max_redraws", "target_rate", "delta", "calibration"),
                help={"threshold": "the --abort detector's threshold",
                      "max_redraws": "--abort: redraws per sample at most, the last kept (default: 3)",
                      "target_rate": "--abort without a threshold: certify one per model from a labelled "
                                     "calibration draw, so that the hallucination rate among the samples accepted "
                                     "below it is at most this with probability >= 1 - --abort-delta; the .npz "
                                     "gains abort_threshold, abort_accepted, abort_bound [S] and still_flagged "
                                     "[S, N] (the samples kept because their redraws ran out, not covered)",
                      "delta": "--abort-target-rate's failure probability (default: 0.1)",
                      "calibration": "--abort-target-rate's calibration samples per model, drawn apart "
                                     "(default: 10000)"})
    p.add_argument("--overwrite", action="store_true", help="replace an existing samples file made by mijax")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, type=_path,
                   help="output .npz: x [S, N, *shape] (points [S, N, d], images [S, N, H, W, C]), hal [S, N], "
                        "and the run, step and config it came from")
    p.add_argument("--figures", type=_path, default=None, metavar="DIR", help=FIGURES_HELP)
    _add_distributed_arguments(p)


def _add_recursive_arguments(p: argparse.ArgumentParser) -> None:
    from mijax import config

    _add_train_arguments(p, resume=False)  # a study resumes by rerunning the same command
    _add_fields(p, config.RecursiveConfig, "recursive", ("generations", "filters", "pool_extra", "pool_ratio",
                                                          "threshold_keep", "certified_alpha",
                                                          "certified_delta", "chunk_size"))
    _add_fields(p.add_argument_group("how the pools are sampled"), config.SamplerConfig, "sampler",
                config.SamplerConfig.CHOICE + HAL_FIELDS)


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
    ev.add_argument("--figures", type=_path, default=None, metavar="DIR", help=FIGURES_HELP)
    ev.add_argument("--target-rate", type=_finite("--target-rate", 0, 1, low_open=True), default=None, metavar="ALPHA",
                    help="also certify, per seed, a threshold on --score that keeps the hallucination rate among the "
                         "samples it keeps at most ALPHA with probability >= 1 - --delta (these samples as the "
                         "calibration set)")
    ev.add_argument("--delta", type=_finite("--delta", 0, 1, low_open=True), default=None,
                    help="--target-rate's failure probability (default: 0.1)")
    ev.add_argument("--score", default=None, help="--target-rate's score: hal or a stored detector (default: hal)")
    sub.add_parser("data", help="list the registered data sets and models with their options and defaults")
    demo = sub.add_parser("demo", help="train, sample 50,000 points, report the hallucinations (~5 min on 2 CPUs)")
    demo.add_argument("--out", type=_path, default=None, help=f"output directory (default: {DEMO_OUT})")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo (once the new one is complete)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    exp = sub.add_parser("experiment", help="run one of the paper's experiments (or `all`); --list names them")
    exp.add_argument("name", nargs="?", help="experiment name, or `all`")
    exp.add_argument("--list", action="store_true",
                     help="name the experiments, one line each, with their profiles and the quick profile's "
                          "measured time on 2 CPU cores")
    from mijax.experiments import DEFAULT_PROFILE, PROFILES

    exp.add_argument("--profile", default=None, metavar="{" + ",".join(PROFILES) + "}",
                     help=f"smoke: toy sizes, seconds to a minute (a check that it runs); quick: minutes on 2 CPU "
                          f"cores; paper: the paper's sizes (for a GPU) (default: {DEFAULT_PROFILE}); some "
                          f"experiments have more (--list names them)")
    exp.add_argument("--seeds", type=_positive_int("seeds"), default=None, help="seeds (None: the profile's)")
    exp.add_argument("--out", type=_path, default=None, help="output directory (all: one folder per experiment)")
    exp.add_argument("--overwrite", action="store_true",
                     help="replace a finished experiment made by mijax (once the new one is complete)")
    exp.add_argument("--runs", type=_path, default=None,
                     help="a folder of trained runs shared by experiments: one that trains the same configuration as "
                          "another reuses its models and samples (all: OUT/runs by default; one experiment: its own)")
    exp.add_argument("--set", type=_option, action="append", default=None, metavar="KEY=VALUE", dest="overrides",
                     help="change one of the profile's fields, of its type (repeatable; one experiment, not `all`), "
                          "e.g. --set steps=20000 --set num_samples=100000; the report lists the sizes used")
    exp.add_argument("--no-progress", action="store_true", help="no progress bars")
    from mijax import config

    sampling = exp.add_argument_group(
        "the reverse sampler of every experiment",
        "default: DDPM over all T steps, as published. Each experiment keeps its own Hal windows, counted in the "
        "sampler's reverse steps; score, and detectors with its abort study, draw with DDPM only and are refused "
        "(left out of `all`); the report and metrics.json record the sampler")
    _add_fields(sampling, config.SamplerConfig, "sampler", config.SamplerConfig.CHOICE)
    _add_recursive_arguments(sub.add_parser("recursive", help="recursive training on generated data, with and "
                                            "without Hal filtering; rerun the same command to resume"))
    sub.add_parser("bench", help="throughput and memory of sampling and training (`mijax bench --help`)")
    return parser


def _base_config(a):
    """The configuration the training options change: the run's own on ``--resume`` (when ``--out`` holds one),
    else the one ``--config`` names, else None."""
    from mijax import runs

    if a.config is not None and getattr(a, "resume", False):
        raise UsageError("--resume continues the run's own configuration; drop --config")
    if getattr(a, "resume", False) and (a.out / "config.json").exists():
        return runs.load_config(a.out)
    if a.config is not None:
        return runs.load_config(a.config) if a.config.is_dir() else runs.config_file(a.config)
    return None


def _run_config(a):
    """The RunConfig of the training options (train and recursive): the options given over the base (the run's
    own on --resume, --config's), else over the configuration's defaults; data-set options go to the data set,
    which refuses those it does not take."""
    import dataclasses

    from mijax.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig, paper_steps

    base = _base_config(a)
    dataset = a.dataset or (base.data.dataset if base is not None else None)
    if dataset is None:
        raise UsageError("--dataset is required (or --config RUN, or --resume a run in --out)")
    same_data = base is not None and dataset == base.data.dataset
    options = dict(base.data.options) if same_data else {}
    options.update(dict(a.data_option or []))
    options.update({name: value for name, value in (("modes", a.modes), ("std", a.std)) if value is not None})
    if a.mnist_dir is not None:
        if dataset != "mnist":
            raise UsageError("--mnist-dir applies to --dataset mnist only")
        options["path"] = a.mnist_dir
    given = {section: _given(a, section) for section in ("data", "model", "train", "diffusion", "run")}
    n_train = given["data"].get("n_train", base.data.n_train if same_data else None)
    data = _config(DataConfig, dataset, n_train, options)
    name = given["model"].get("name", base.model.name if base is not None else ModelConfig.name)
    model_options = dict(base.model.options) if base is not None and name == base.model.name else {}
    model_options.update(dict(a.model_option or []))
    if a.untied:
        model_options["tied"] = False
    precision = given["model"].get("precision", base.model.precision if base is not None else ModelConfig.precision)
    model = _config(ModelConfig, name, precision, model_options)
    diffusion = _config(dataclasses.replace, base.diffusion if base is not None else DiffusionConfig(),
                        **given["diffusion"])
    if base is not None:
        train = base.train
    else:
        batch = _config(TrainConfig, batch_size=given["train"].get("batch_size", TrainConfig.batch_size)).batch_size
        train = TrainConfig(steps=paper_steps(data.n_train, batch))
    train = _config(dataclasses.replace, train, **given["train"], objective=diffusion.objective)
    if base is None:
        return _config(RunConfig, data=data, model=model, diffusion=diffusion, train=train, **given["run"])
    return _config(dataclasses.replace, base, data=data, model=model, diffusion=diffusion, train=train, **given["run"])


def _train(a) -> None:
    from mijax.runs import train_run

    config = _run_config(a)
    train_run(a.out, config, resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress)
    print(f"trained {config.seeds} model(s) for {config.train.steps} steps -> {a.out}")


def _sampler_options(a) -> dict:
    """The sampler's options given on the command line, {field: value} (of :attr:`mijax.config.SamplerConfig.CHOICE`, and of
    :data:`HAL_FIELDS` where the command has them), refused in one line where the chosen sampler or Hal
    reduction would ignore one: ``--ddim-steps`` and ``--skip`` with DDPM, ``--eta`` and the stochastic steps
    without DDIM, ``--variance`` without a DDPM step, ``--hal-top-k`` without the ``top_k`` reduction. The same
    check for ``mijax sample``, ``recursive`` and ``experiment``."""
    from mijax.config import SamplerConfig

    sampler = _given(a, "sampler")
    name = sampler.get("sampler", SamplerConfig.sampler)
    if name == "ddpm" and ({"ddim_steps", "skip"} & set(sampler)):
        raise UsageError("--ddim-steps and --skip apply to the step-skipping samplers (ddim, heun, dpmpp2m) only")
    if name != "ddim" and ({"eta", "stochastic_steps", "stochastic_at", "stochastic_from"} & set(sampler)):
        raise UsageError(f"--eta, --stochastic-steps, --stochastic-at and --stochastic-from apply to --sampler ddim "
                         f"only (--sampler {name} ignores them)")
    window = sampler.get("stochastic_at") == "window"
    if window != ("stochastic_from" in sampler) or (window and not sampler.get("stochastic_steps")):
        raise UsageError("--stochastic-at window takes --stochastic-steps K and --stochastic-from T (the timestep "
                         "its K steps start from), and --stochastic-from only that")
    stochastic = name == "ddpm" or sampler.get("stochastic_steps", 0) > 0
    if not stochastic and "variance" in sampler:
        raise UsageError(f"--variance applies to DDPM's steps only: --sampler ddpm, or ddim's --stochastic-steps "
                         f"(--sampler {name} ignores it)")
    reduction = sampler.get("hal_reduction", SamplerConfig.hal_reduction)
    if "hal_top_k" in sampler and reduction != "top_k":
        raise UsageError(f"--hal-top-k applies to --hal-reduction top_k only (--hal-reduction {reduction} "
                         "ignores it)")
    return sampler


def _sample_config(a):
    """The SampleConfig of the sampling options (its sampler and abort-and-resample)."""
    from mijax.config import AbortConfig, SampleConfig, SamplerConfig
    from mijax.detectors import parse

    sampler = _sampler_options(a)
    if a.out is not None and a.out.suffix != ".npz":
        raise UsageError(f"--out {a.out}: samples are an .npz file; name it with the suffix .npz")
    if a.detectors is not None:
        try:
            sampler["detectors"] = parse(a.detectors)
        except ValueError as e:
            raise UsageError(f"--detectors: {e}") from None
    abort = _given(a, "abort")
    if a.abort is None and abort:
        raise UsageError("--abort-threshold, --abort-target-rate and --max-redraws apply to --abort only")
    if a.abort is not None and ("threshold" in abort) == ("target_rate" in abort):
        raise UsageError("--abort takes --abort-threshold or --abort-target-rate (one of them)")
    if "target_rate" not in abort and {"delta", "calibration"} & set(abort):
        raise UsageError("--abort-delta and --abort-calibration apply to --abort-target-rate only")
    if a.abort is not None:
        try:
            specs = parse(a.abort)
        except ValueError as e:
            raise UsageError(f"--abort: {e}") from None
        if len(specs) != 1:
            raise UsageError("--abort takes one detector")
        abort = _config(AbortConfig, specs[0], **abort)
    return _config(SampleConfig, **_given(a, "sample"), sampler=_config(SamplerConfig, **sampler),
                   abort=abort if a.abort is not None else None)


def _sample(a) -> None:
    from mijax import store
    from mijax.runs import sample_run

    config = _sample_config(a)
    if a.figures is not None:
        store.check_writable(a.figures / "samples.png")
    result = sample_run(a.run, config.n, seed=config.seed, sampler=config.sampler, chunk_size=config.chunk_size,
                        progress=not a.no_progress, out=a.out, precision=config.precision, kernel=config.kernel,
                        overwrite=a.overwrite, abort=config.abort)
    import jax

    if jax.process_index() == 0:
        print(f"{result['shape'][0]} seed(s) x {config.n} samples -> {a.out}")
        from mijax import evaluation

        samples = evaluation.load_samples(a.out)
        result = evaluation.evaluate(samples)
        print(evaluation.format_summary(result))
        if a.figures is not None:
            for path in evaluation.plot_evaluation(samples, result, a.figures):
                print(f"-> {path}")


def _eval(a) -> None:
    from mijax import evaluation, store
    from mijax.store import write_json

    if a.json_out is not None:
        store.check_writable(a.json_out)
    if a.figures is not None:
        store.check_writable(a.figures / "samples.png")
    if a.target_rate is None and (a.delta is not None or a.score is not None):
        raise UsageError("--delta and --score apply to --target-rate only")
    samples = evaluation.load_samples(a.samples)
    result = evaluation.evaluate(samples)
    print(evaluation.format_summary(result))
    if a.target_rate is not None:
        result["certified"] = evaluation.certify(samples, a.target_rate, 0.1 if a.delta is None else a.delta,
                                                 a.score or "hal")
        print(evaluation.format_certified(result["certified"], result["seeds"]))
    if a.json_out is not None:
        write_json(a.json_out, {"samples": str(a.samples), "run": samples["run"], "step": samples["step"], **result})
        print(f"-> {a.json_out}")
    if a.figures is not None:
        for path in evaluation.plot_evaluation(samples, result, a.figures):
            print(f"-> {path}")


def _demo(a) -> None:
    from mijax.experiments.demo import run_demo

    run_demo(a.out or Path(DEMO_OUT), overwrite=a.overwrite, progress=not a.no_progress)


def _profile_names(module) -> str:
    """An experiment's profiles, the quick one with its measured wall time on 2 CPU cores where the module gives
    one (``QUICK_MINUTES``) and the experiments whose models that run reused (``QUICK_REUSES``)."""
    names = list(module.PROFILES)
    minutes = getattr(module, "QUICK_MINUTES", None)
    if minutes is not None and "quick" in names:
        reuses = getattr(module, "QUICK_REUSES", ())
        time = "under 1 min" if minutes < 1 else f"~{minutes:.0f} min"
        names[names.index("quick")] = (f"quick {time} on 2 cores"
                                       + (f" reusing the models of {' and '.join(reuses)}" if reuses else ""))
    return ", ".join(names)


def _experiment(a) -> None:
    from mijax import experiments

    if a.list:
        for name in experiments.names():
            module = experiments.load(name)
            print(f"{name:16s} {module.SUMMARY} (profiles: {_profile_names(module)})")
        return
    if a.name is None:
        raise UsageError("name an experiment (or `all`), or pass --list")
    a.profile = a.profile or experiments.DEFAULT_PROFILE
    if a.out is None:
        raise UsageError("--out is required")
    chosen = experiments.names() if a.name == "all" else [a.name]
    modules = {name: experiments.load(name) for name in chosen}  # unknown names fail before any work
    for name, module in modules.items():
        if a.profile not in module.PROFILES:
            raise UsageError(f"experiment {name} has no profile {a.profile!r}; its profiles are "
                             f"{', '.join(module.PROFILES)}")
    from mijax.experiments import common

    a.overrides = _experiment_overrides(a, modules)
    a.sampler = _experiment_sampler(a, modules)

    runs = a.runs if a.runs is not None else (a.out / "runs" if a.name == "all" else None)
    with (common.shared_runs(runs) if runs is not None else contextlib.nullcontext()), \
            common.sampler_choice(a.sampler):
        _run_experiments(a, modules)


def _experiment_sampler(a, modules) -> dict:
    """The reverse sampler chosen for the experiments (``--sampler`` and its options, checked as ``mijax sample``
    checks them): the settings that differ from the defaults ({}: DDPM as published). Before any work, an
    experiment that cannot draw with it (its ``refuses_sampler(profile)`` gives the reason) is refused in one line
    naming it, or left out of ``all`` with a line saying so; so is a sampler that cannot run at an experiment's T.
    ``modules`` loses the experiments left out."""
    from mijax.config import SamplerConfig
    from mijax.experiments import common

    given = _sampler_options(a)
    _config(SamplerConfig, **given)  # a value its field does not take: named as the option
    chosen = common.sampler_settings(given)
    if not chosen:
        return {}
    text = common.sampler_text(chosen)
    for name, module in list(modules.items()):
        p = common.resolve_profile(module.PROFILES, a.profile, a.seeds, a.overrides or None)
        refuses = getattr(module, "refuses_sampler", None)
        reason = refuses(p) if refuses is not None else None
        if reason is not None:
            if a.name != "all":
                raise UsageError(f"experiment {name} does not take {text}: {reason}")
            print(f"{name}: left out, it does not take {text}: {reason}")
            del modules[name]
        elif "timesteps" in p:
            try:
                common.check_sampler(chosen, p["timesteps"])
            except common.SamplerRefused as e:
                raise UsageError(f"experiment {name}: {e}") from None
    return chosen


def _run_experiments(a, modules) -> None:
    from mijax import store
    from mijax.experiments import common

    with store.lock(a.out if a.name == "all" else None):
        if a.name == "all":
            store.check(a.out, "experiments", resume=True)
            store.mark(a.out, "experiments")
        for name, module in modules.items():
            out = a.out / name if a.name == "all" else a.out
            with store.lock(out):
                finished = (out / "metrics.json").exists()
                if finished and not a.overwrite:
                    if a.name == "all":
                        used = _recorded_sampler(out / "metrics.json")
                        if used != a.sampler:
                            raise UsageError(f"{name} finished earlier in {out} with another sampler ("
                                             f"{common.sampler_text(used) or 'DDPM, as published'}); pass "
                                             "--overwrite to rerun it, or choose another --out")
                        print(f"{name}: finished earlier in {out}, skipped (--overwrite reruns it)")
                        continue
                    raise UsageError(f"{out} holds a finished experiment; pass --overwrite to rerun it")
                store.check(out, "experiment", overwrite=a.overwrite, resume=not finished)
                print(f"== {name} ({a.profile}) -> {out}")
                with store.replacing(out, "experiment", replace=finished) as target:
                    try:
                        module.run(target, profile=a.profile, seeds=a.seeds, progress=not a.no_progress,
                                   overrides=a.overrides or None)
                    except common.SamplerRefused as e:
                        raise UsageError(f"experiment {name}: {e}") from None


def _recorded_sampler(metrics) -> dict:
    """The reverse sampler a finished experiment's ``metrics.json`` records ({}: DDPM as published, also for one
    that cannot be read)."""
    import json

    try:
        recorded = json.loads(Path(metrics).read_text()).get("sampler") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _experiment_overrides(a, modules) -> dict:
    """``--set KEY=VALUE`` as a dict, checked against the typed fields of the chosen profile before any work: each
    key a field, each value converted to its field's type (:meth:`mijax.experiments.common.Profile.changed`: text
    as an int, a number, true/false, a list) and in its range; else a UsageError naming the key, what it takes
    and the experiment."""
    from mijax.config import ConfigError
    from mijax.registry import option_text

    overrides = dict(getattr(a, "overrides", None) or [])
    if not overrides:
        return {}
    if a.name == "all":
        raise UsageError("--set changes one experiment's sizes; name the experiment, not `all`")
    if "seeds" in overrides:
        raise UsageError("--set seeds=...: use --seeds")
    (name, module), = modules.items()
    try:
        profile = module.PROFILES[a.profile].changed(overrides, owner=f"experiment {name} profile")
    except ConfigError as e:
        given = f" {e.field}={option_text(overrides[e.field])}" if e.field in overrides else ""
        raise UsageError(f"--set{given}: {e}") from None
    return {key: getattr(profile, key) for key in overrides}


def _recursive(a) -> None:
    from mijax.config import RecursiveConfig, SamplerConfig
    from mijax.recursive import run_recursive
    from mijax.stats import format_ci

    run = _run_config(a)
    sampler = _config(SamplerConfig, **_sampler_options(a))
    config = _config(RecursiveConfig, run=run, sampler=sampler, **_given(a, "recursive"))
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
    from mijax.registry import option_text

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
                    _device_per_core(argv)
                _bench(argv[1:])
                return 0
            if as_program:  # before anything can start JAX's backends, which fixes their devices and flags
                _device_per_core(argv)
            args = build_parser().parse_args(argv)
            if hasattr(args, "coordinator_address"):  # how the command runs, decided before what it computes
                _init_distributed(args)
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
    """One line for an OSError that reached the command: a :class:`mijax.store.WriteFailed` says itself; another names
    what the system said and the file."""
    from mijax.store import WRITE_ERRORS, WriteFailed

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
