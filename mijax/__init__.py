"""mijax: hallucinations in diffusion models through mode interpolation (Aithal et al., NeurIPS 2024), in JAX.

The curated public API. Data flows one way: schedule -> data (mixtures) -> training -> sampling
(x, Hal) -> hallucination metrics -> figures and reports.
"""
from mijax.diffusion import (
    OBJECTIVES,
    denoising_loss,
    model_predictions,
    posterior_mean_variance,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_sample,
)
from mijax.hallucination import (
    auroc,
    blur_adjusted_labels,
    detection_summary,
    hallucination_rate,
    labels,
    random_filter,
    rate_table,
    removal_at_retention,
    retained_at_removal,
    roc_curve,
    threshold_filter,
    variance_filter,
)
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
from mijax.models import KERNELS, FusedDenoiser, ModuleDenoiser, ToyDenoiser, make_denoiser, timestep_embedding
from mijax.recursive import RecursiveConfig, filter_indices, run_generation, run_recursive
from mijax.sampling import SamplerConfig, Samples, reverse_timesteps, sample, sample_chunks
from mijax.schedules import SCHEDULES, Schedule, beta_values, make_schedule
from mijax.training import TrainConfig, TrainState, get_batch, init_state, make_optimizer, train, train_step, train_steps

__version__ = "0.1.0"

__all__ = [
    "KERNELS", "OBJECTIVES", "SCHEDULES", "FusedDenoiser", "GaussianMixture", "ModuleDenoiser", "SamplerConfig", "Samples", "Schedule", "ToyDenoiser",
    "TrainConfig", "TrainState", "beta_values", "denoising_loss", "exact_denoiser", "exact_eps", "gaussian1d",
    "gaussian8", "gaussian25", "gaussian25_rotated", "get_batch", "in_support", "init_state", "log_prob",
    "make_denoiser", "make_mixture", "make_optimizer", "make_schedule", "mass_beyond", "model_predictions", "nearest_mode",
    "noised", "posterior_mean_variance", "predict_eps_from_x0", "predict_x0_from_eps", "q_sample",
    "reverse_timesteps", "sample", "sample_chunks", "sample_mixture", "score", "timestep_embedding", "train",
    "train_step", "train_steps",
    # hallucination labels, detection and filters
    "auroc", "blur_adjusted_labels", "detection_summary", "hallucination_rate", "labels", "random_filter",
    "rate_table", "removal_at_retention", "retained_at_removal", "roc_curve", "threshold_filter",
    "variance_filter",
    # recursive training on generated data
    "RecursiveConfig", "filter_indices", "run_generation", "run_recursive",
]
