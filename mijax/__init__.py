"""mijax: hallucinations in diffusion models through mode interpolation (Aithal et al., NeurIPS 2024), in JAX.

The curated public API (:data:`API`, by concept). Data flows one way: config -> data set -> training -> sampling (x, Hal) ->
hallucination labels (the data set's) and detection -> figures and reports. A data set, a model or an
experiment is one module plus a registry entry (:mod:`mijax.data`, :mod:`mijax.models`,
:mod:`mijax.experiments`).

Names are imported on first use (PEP 562): ``import mijax``, and so the ``mijax`` command, which must take
Ctrl-C from its first moment, does not import JAX until something needs it.
"""
import importlib

from mijax.version import __version__

# The public API by concept: name -> "module" or "module:attribute" (the attribute's own name when omitted).
# Everything else stays reachable as its module (``mijax.training.train_step``, ``mijax.collect.draw``).
API = {
    "configuration": {
        "RunConfig": "mijax.config", "DataConfig": "mijax.config", "ModelConfig": "mijax.config",
        "DiffusionConfig": "mijax.config", "TrainConfig": "mijax.config", "SamplerConfig": "mijax.config",
        "SampleConfig": "mijax.config", "AbortConfig": "mijax.config", "RecursiveConfig": "mijax.config",
        "ConfigError": "mijax.config", "build": "mijax.config", "config_from_dict": "mijax.config",
        "config_to_dict": "mijax.config", "data_config": "mijax.config", "paper_steps": "mijax.config",
    },
    "runs": {
        "Run": "mijax.runs", "train_run": "mijax.runs", "load_run": "mijax.runs", "sample_run": "mijax.runs",
        "load_samples": "mijax.evaluation", "evaluate": "mijax.evaluation", "seed_keys": "mijax.keys",
        "MijaxError": "mijax.errors", "__version__": "mijax.version",
    },
    "data sets and Gaussian mixtures": {
        "data": "mijax.data:", "MixtureDataset": "mijax.data.mixtures", "labels": "mijax.data.mixtures",
        "blur_adjusted_labels": "mijax.data.mixtures", "hallucination_rate": "mijax.data.mixtures",
        "histogram_kl": "mijax.data.mixtures", "mode_mass": "mijax.data.mixtures", "rate_table": "mijax.data.mixtures",
        "GaussianMixture": "mijax.mixtures", "make_mixture": "mijax.mixtures", "gaussian1d": "mijax.mixtures",
        "gaussian8": "mijax.mixtures", "gaussian25": "mijax.mixtures", "gaussian25_rotated": "mijax.mixtures",
        "sample_mixture": "mijax.mixtures:sample", "log_prob": "mijax.mixtures", "score": "mijax.mixtures",
        "exact_eps": "mijax.mixtures", "exact_denoiser": "mijax.mixtures", "noised": "mijax.mixtures",
        "in_support": "mijax.mixtures", "nearest_mode": "mijax.mixtures", "mass_beyond": "mijax.mixtures",
    },
    "diffusion": {
        "Schedule": "mijax.schedules", "SCHEDULES": "mijax.schedules", "make_schedule": "mijax.schedules",
        "beta_values": "mijax.schedules", "OBJECTIVES": "mijax.diffusion", "q_sample": "mijax.diffusion",
        "denoising_loss": "mijax.diffusion", "denoising_loss_at": "mijax.diffusion", "loss_draws": "mijax.diffusion",
        "sample_timesteps": "mijax.diffusion", "model_predictions": "mijax.diffusion",
        "posterior_mean_variance": "mijax.diffusion", "predict_eps_from_x0": "mijax.diffusion",
        "predict_x0_from_eps": "mijax.diffusion",
    },
    "models": {
        "ToyDenoiser": "mijax.models", "FusedDenoiser": "mijax.models", "KERNELS": "mijax.models",
        "make_denoiser": "mijax.models", "timestep_embedding_closed": "mijax.models",
    },
    "training": {
        "train": "mijax.training", "TrainState": "mijax.training", "init_state": "mijax.training",
        "make_optimizer": "mijax.training",
    },
    "sampling with Hal": {
        "sample": "mijax.sampling", "sample_chunks": "mijax.sampling", "Samples": "mijax.sampling",
        "HAL_REDUCTIONS": "mijax.hal", "sample_with_abort": "mijax.abort",
    },
    "detection and filters": {
        "DETECTORS": "mijax.detectors", "DetectorSpec": "mijax.detectors", "parse_detectors": "mijax.detectors:parse",
        "auroc": "mijax.detection", "roc_curve": "mijax.detection", "detection_summary": "mijax.detection",
        "removal_at_retention": "mijax.detection", "retained_at_removal": "mijax.detection",
        "FILTERS": "mijax.filters", "filter_indices": "mijax.filters", "calibrate_threshold": "mijax.filters",
        "random_filter": "mijax.filters", "threshold_filter": "mijax.filters", "variance_filter": "mijax.filters",
        "run_recursive": "mijax.recursive",
    },
    "how it runs": {
        "plan_for": "mijax.execution", "use_cpu_cores": "mijax.distributed",
        "use_xla_cpu_kernels": "mijax.distributed",
    },
}
# name -> (module, attribute in it; None: the module itself)
_EXPORTS = {name: (where.partition(":")[0], (where.partition(":")[2] or None) if ":" in where else name)
            for group in API.values() for name, where in group.items()}


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = importlib.import_module(module)
        value = value if attribute is None else getattr(value, attribute)
    else:
        try:  # a submodule, e.g. mijax.runs
            value = importlib.import_module(f"mijax.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"mijax.{name}":
                raise
            raise AttributeError(f"module 'mijax' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(__all__) | set(globals()))


__all__ = list(_EXPORTS)
