"""mijax: hallucinations in diffusion models through mode interpolation (Aithal et al., NeurIPS 2024), in JAX.

The curated public API. Data flows one way: config -> data set -> training -> sampling (x, Hal) ->
hallucination labels (the data set's) and detection -> figures and reports. A data set, a model or an
experiment is one module plus a registry entry (:mod:`mijax.data`, :mod:`mijax.models`,
:mod:`mijax.experiments`).
"""
from mijax import data
from mijax.collect import draw
from mijax.config import (DataConfig, DiffusionConfig, ModelConfig, RunConfig, build, config_from_dict,
                          config_to_dict, data_config, paper_steps)
from mijax.data.mixtures import (MixtureDataset, blur_adjusted_labels, hallucination_rate, histogram_kl, labels,
                                 mode_mass, rate_table)
from mijax.detection import auroc, detection_summary, removal_at_retention, retained_at_removal, roc_curve
from mijax.diffusion import (
    OBJECTIVES,
    denoising_loss,
    model_predictions,
    posterior_mean_variance,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_sample,
)
from mijax.filters import (FILTERS, calibrate_threshold, filter_indices, random_filter, threshold_filter,
                           variance_filter)
from mijax.io import MijaxError
from mijax.keys import sample_keys, seed_keys
from mijax.mixtures import (
    GaussianMixture,
    exact_denoiser,
    exact_eps,
    gaussian1d,
    gaussian8,
    gaussian25,
    gaussian25_rotated,
    in_support,
    log_prob,
    make_mixture,
    mass_beyond,
    nearest_mode,
    noised,
    score,
)
from mijax.mixtures import sample as sample_mixture
from mijax.models import KERNELS, Flattened, FusedDenoiser, ModuleDenoiser, ToyDenoiser, make_denoiser, timestep_embedding
from mijax.recursive import RecursiveConfig, run_generation, run_recursive
from mijax.runs import fit, load_run, sample_run, train_run
from mijax.sampling import HAL_REDUCTIONS, SamplerConfig, Samples, reverse_timesteps, sample, sample_chunks
from mijax.schedules import SCHEDULES, Schedule, beta_values, make_schedule
from mijax.training import (TrainConfig, TrainState, get_batch, init_state, init_states, make_optimizer, train,
                            train_step, train_steps)
from mijax.version import __version__

__all__ = [
    "HAL_REDUCTIONS", "KERNELS", "OBJECTIVES", "SCHEDULES", "Flattened", "FusedDenoiser", "GaussianMixture",
    "ModuleDenoiser", "SamplerConfig", "Samples", "Schedule", "ToyDenoiser", "TrainConfig", "TrainState",
    "beta_values", "denoising_loss", "exact_denoiser", "exact_eps", "gaussian1d", "gaussian8", "gaussian25",
    "gaussian25_rotated", "get_batch", "in_support", "init_state", "init_states", "log_prob", "make_denoiser",
    "make_mixture", "make_optimizer", "make_schedule", "mass_beyond", "model_predictions", "nearest_mode", "noised",
    "posterior_mean_variance", "predict_eps_from_x0", "predict_x0_from_eps", "q_sample", "reverse_timesteps",
    "sample", "sample_chunks", "sample_mixture", "score", "timestep_embedding", "train", "train_step",
    "train_steps", "MijaxError", "__version__",
    # configs, data sets and runs
    "DataConfig", "DiffusionConfig", "ModelConfig", "RunConfig", "build", "config_from_dict", "config_to_dict",
    "data", "data_config", "paper_steps", "MixtureDataset", "seed_keys", "sample_keys", "fit", "train_run",
    "load_run", "sample_run", "draw",
    # hallucination labels (mixtures), detection and filters
    "auroc", "blur_adjusted_labels", "detection_summary", "hallucination_rate", "histogram_kl", "labels",
    "mode_mass", "rate_table", "removal_at_retention", "retained_at_removal", "roc_curve", "FILTERS",
    "calibrate_threshold", "filter_indices", "random_filter", "threshold_filter", "variance_filter",
    # recursive training on generated data
    "RecursiveConfig", "run_generation", "run_recursive",
]
