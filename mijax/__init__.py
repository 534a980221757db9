"""mijax: hallucinations in diffusion models through mode interpolation (Aithal et al., NeurIPS 2024), in JAX.

The curated public API. Data flows one way: config -> data set -> training -> sampling (x, Hal) ->
hallucination labels (the data set's) and detection -> figures and reports. A data set, a model or an
experiment is one module plus a registry entry (:mod:`mijax.data`, :mod:`mijax.models`,
:mod:`mijax.experiments`).

Names are imported on first use (PEP 562): ``import mijax``, and so the ``mijax`` command, which must take
Ctrl-C from its first moment, does not import JAX until something needs it.
"""
import importlib

from mijax.version import __version__

# name -> (module, attribute in it; None: the module itself)
_EXPORTS = {
    "AbortConfig": ("mijax.config", "AbortConfig"),
    "ConfigError": ("mijax.config", "ConfigError"),
    "SampleConfig": ("mijax.config", "SampleConfig"),
    "DETECTORS": ("mijax.detectors", "DETECTORS"),
    "DataConfig": ("mijax.config", "DataConfig"),
    "DetectorSpec": ("mijax.detectors", "DetectorSpec"),
    "DiffusionConfig": ("mijax.config", "DiffusionConfig"),
    "FILTERS": ("mijax.filters", "FILTERS"),
    "Flattened": ("mijax.models", "Flattened"),
    "FusedDenoiser": ("mijax.models", "FusedDenoiser"),
    "GaussianMixture": ("mijax.mixtures", "GaussianMixture"),
    "HAL_REDUCTIONS": ("mijax.hal", "HAL_REDUCTIONS"),
    "KERNELS": ("mijax.models", "KERNELS"),
    "MijaxError": ("mijax.errors", "MijaxError"),
    "MixtureDataset": ("mijax.data.mixtures", "MixtureDataset"),
    "ModelConfig": ("mijax.config", "ModelConfig"),
    "ModuleDenoiser": ("mijax.models", "ModuleDenoiser"),
    "OBJECTIVES": ("mijax.diffusion", "OBJECTIVES"),
    "RecursiveConfig": ("mijax.config", "RecursiveConfig"),
    "RunConfig": ("mijax.config", "RunConfig"),
    "SCHEDULES": ("mijax.schedules", "SCHEDULES"),
    "SamplerConfig": ("mijax.config", "SamplerConfig"),
    "Samples": ("mijax.sampling", "Samples"),
    "Schedule": ("mijax.schedules", "Schedule"),
    "ToyDenoiser": ("mijax.models", "ToyDenoiser"),
    "TrainConfig": ("mijax.config", "TrainConfig"),
    "TrainState": ("mijax.training", "TrainState"),
    "__version__": ("mijax.version", "__version__"),
    "auroc": ("mijax.detection", "auroc"),
    "beta_values": ("mijax.schedules", "beta_values"),
    "blur_adjusted_labels": ("mijax.data.mixtures", "blur_adjusted_labels"),
    "build": ("mijax.config", "build"),
    "calibrate_threshold": ("mijax.filters", "calibrate_threshold"),
    "config_from_dict": ("mijax.config", "config_from_dict"),
    "config_to_dict": ("mijax.config", "config_to_dict"),
    "data": ("mijax.data", None),
    "data_config": ("mijax.config", "data_config"),
    "denoising_loss": ("mijax.diffusion", "denoising_loss"),
    "denoising_loss_at": ("mijax.diffusion", "denoising_loss_at"),
    "loss_draws": ("mijax.diffusion", "loss_draws"),
    "batch_gradient": ("mijax.training", "batch_gradient"),
    "sample_timesteps": ("mijax.diffusion", "sample_timesteps"),
    "detection_summary": ("mijax.detection", "detection_summary"),
    "draw": ("mijax.collect", "draw"),
    "evaluate": ("mijax.evaluation", "evaluate"),
    "load_samples": ("mijax.evaluation", "load_samples"),
    "exact_denoiser": ("mijax.mixtures", "exact_denoiser"),
    "exact_eps": ("mijax.mixtures", "exact_eps"),
    "filter_indices": ("mijax.filters", "filter_indices"),
    "fit": ("mijax.runs", "fit"),
    "gaussian1d": ("mijax.mixtures", "gaussian1d"),
    "gaussian25": ("mijax.mixtures", "gaussian25"),
    "gaussian25_rotated": ("mijax.mixtures", "gaussian25_rotated"),
    "gaussian8": ("mijax.mixtures", "gaussian8"),
    "get_batch": ("mijax.training", "get_batch"),
    "hallucination_rate": ("mijax.data.mixtures", "hallucination_rate"),
    "histogram_kl": ("mijax.data.mixtures", "histogram_kl"),
    "in_support": ("mijax.mixtures", "in_support"),
    "init_state": ("mijax.training", "init_state"),
    "init_states": ("mijax.training", "init_states"),
    "labels": ("mijax.data.mixtures", "labels"),
    "load_run": ("mijax.runs", "load_run"),
    "log_prob": ("mijax.mixtures", "log_prob"),
    "make_denoiser": ("mijax.models", "make_denoiser"),
    "make_mixture": ("mijax.mixtures", "make_mixture"),
    "make_optimizer": ("mijax.training", "make_optimizer"),
    "make_schedule": ("mijax.schedules", "make_schedule"),
    "mass_beyond": ("mijax.mixtures", "mass_beyond"),
    "mode_mass": ("mijax.data.mixtures", "mode_mass"),
    "model_predictions": ("mijax.diffusion", "model_predictions"),
    "nearest_mode": ("mijax.mixtures", "nearest_mode"),
    "noised": ("mijax.mixtures", "noised"),
    "parse_detectors": ("mijax.detectors", "parse"),
    "paper_steps": ("mijax.config", "paper_steps"),
    "posterior_mean_variance": ("mijax.diffusion", "posterior_mean_variance"),
    "predict_eps_from_x0": ("mijax.diffusion", "predict_eps_from_x0"),
    "predict_x0_from_eps": ("mijax.diffusion", "predict_x0_from_eps"),
    "q_sample": ("mijax.diffusion", "q_sample"),
    "random_filter": ("mijax.filters", "random_filter"),
    "rate_table": ("mijax.data.mixtures", "rate_table"),
    "removal_at_retention": ("mijax.detection", "removal_at_retention"),
    "retained_at_removal": ("mijax.detection", "retained_at_removal"),
    "reverse_timesteps": ("mijax.sampling", "reverse_timesteps"),
    "roc_curve": ("mijax.detection", "roc_curve"),
    "run_generation": ("mijax.recursive", "run_generation"),
    "run_recursive": ("mijax.recursive", "run_recursive"),
    "sample": ("mijax.sampling", "sample"),
    "sample_chunks": ("mijax.sampling", "sample_chunks"),
    "sample_keys": ("mijax.keys", "sample_keys"),
    "sample_mixture": ("mijax.mixtures", "sample"),
    "sample_run": ("mijax.runs", "sample_run"),
    "sample_with_abort": ("mijax.abort", "sample_with_abort"),
    "score": ("mijax.mixtures", "score"),
    "seed_keys": ("mijax.keys", "seed_keys"),
    "threshold_filter": ("mijax.filters", "threshold_filter"),
    "timestep_embedding_closed": ("mijax.models", "timestep_embedding_closed"),
    "train": ("mijax.training", "train"),
    "train_run": ("mijax.runs", "train_run"),
    "train_step": ("mijax.training", "train_step"),
    "train_steps": ("mijax.training", "train_steps"),
    "use_cpu_cores": ("mijax.distributed", "use_cpu_cores"),
    "use_xla_cpu_kernels": ("mijax.distributed", "use_xla_cpu_kernels"),
    "variance_filter": ("mijax.filters", "variance_filter"),
}


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


__all__ = [
    "HAL_REDUCTIONS", "KERNELS", "OBJECTIVES", "SCHEDULES", "Flattened", "FusedDenoiser", "GaussianMixture",
    "ModuleDenoiser", "SamplerConfig", "Samples", "Schedule", "ToyDenoiser", "TrainConfig", "TrainState",
    "batch_gradient", "beta_values", "denoising_loss", "denoising_loss_at", "exact_denoiser", "exact_eps",
    "gaussian1d", "gaussian8", "gaussian25", "gaussian25_rotated", "get_batch", "in_support", "init_state",
    "init_states", "log_prob", "loss_draws", "make_denoiser",
    "make_mixture", "make_optimizer", "make_schedule", "mass_beyond", "model_predictions", "nearest_mode", "noised",
    "posterior_mean_variance", "predict_eps_from_x0", "predict_x0_from_eps", "q_sample", "reverse_timesteps",
    "sample", "sample_chunks", "sample_mixture", "sample_timesteps", "score", "timestep_embedding_closed", "train",
    "train_step", "train_steps", "use_cpu_cores", "use_xla_cpu_kernels", "MijaxError", "__version__",
    # configs, data sets and runs
    "ConfigError", "DataConfig", "DiffusionConfig", "ModelConfig", "RunConfig", "SampleConfig", "build", "config_from_dict", "config_to_dict",
    "data", "data_config", "paper_steps", "MixtureDataset", "seed_keys", "sample_keys", "fit", "train_run",
    "load_run", "sample_run", "draw", "load_samples", "evaluate",
    # hallucination labels (mixtures), detection and filters
    "auroc", "blur_adjusted_labels", "detection_summary", "hallucination_rate", "histogram_kl", "labels",
    "mode_mass", "rate_table", "removal_at_retention", "retained_at_removal", "roc_curve", "FILTERS",
    "calibrate_threshold", "filter_indices", "random_filter", "threshold_filter", "variance_filter",
    "DETECTORS", "DetectorSpec", "parse_detectors", "AbortConfig", "sample_with_abort",
    # recursive training on generated data
    "RecursiveConfig", "run_generation", "run_recursive",
]
