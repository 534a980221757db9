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

# The public API by concept, one row per module: concept | module | names (NAME=ATTRIBUTE where the module
# calls it otherwise; NAME= for the module itself). Everything else stays reachable as its module
# (``mijax.training.train_step``, ``mijax.collect.draw``).
API_TABLE = """
configuration         | mijax.config        | RunConfig DataConfig ModelConfig DiffusionConfig TrainConfig
                      |                     | SamplerConfig SampleConfig AbortConfig RecursiveConfig
                      |                     | ConfigError build config_from_dict config_to_dict data_config
                      |                     | paper_steps
runs                  | mijax.runs          | Run train_run load_run sample_run
                      | mijax.evaluation    | load_samples evaluate certify
                      | mijax.keys          | seed_keys
                      | mijax.errors        | MijaxError
                      | mijax.version       | __version__
data and mixtures     | mijax.data          | data=
                      | mijax.data.mixtures | MixtureDataset labels blur_adjusted_labels hallucination_rate
                      |                     | histogram_kl mode_mass rate_table
                      | mijax.mixtures      | GaussianMixture make_mixture gaussian1d gaussian8 gaussian25
                      |                     | gaussian25_rotated sample_mixture=sample log_prob score
                      |                     | exact_eps exact_denoiser noised in_support nearest_mode
                      |                     | mass_beyond
diffusion             | mijax.diffusion     | Schedule SCHEDULES make_schedule beta_values OBJECTIVES q_sample
                      |                     | denoising_loss denoising_loss_at loss_draws sample_timesteps
                      |                     | smoothness_penalty min_snr_weights
                      |                     | model_predictions posterior_mean_variance predict_eps_from_x0
                      |                     | predict_x0_from_eps
models                | mijax.models        | ToyDenoiser FusedDenoiser KERNELS make_denoiser
                      |                     | timestep_embedding_closed
training              | mijax.training      | train TrainState init_state make_optimizer eval_params
sampling with Hal     | mijax.sampling      | sample sample_chunks Samples
                      | mijax.samplers      | samplers=
                      | mijax.hal           | HAL_REDUCTIONS
                      | mijax.abort         | sample_with_abort
                      | mijax.guidance      | Guidance guided make_guidance mode_gradient
detection and filters | mijax.detectors     | DETECTORS DetectorSpec parse_detectors=parse
                      | mijax.detection     | auroc roc_curve detection_summary removal_at_retention
                      |                     | retained_at_removal
                      | mijax.filters       | FILTERS filter_indices calibrate_threshold random_filter
                      |                     | threshold_filter variance_filter certify_threshold
                      |                     | split_check
                      | mijax.recursive     | run_recursive
how it runs           | mijax.execution     | plan_for use_cpu_cores use_xla_cpu_kernels
"""


def _api(table: str) -> dict[str, dict[str, tuple[str, str | None]]]:
    """concept -> {name: (module, attribute; None: the module itself)} of :data:`API_TABLE`."""
    api: dict[str, dict[str, tuple[str, str | None]]] = {}
    concept = module = ""
    for row in table.strip().splitlines():
        group, where, names = (part.strip() for part in row.split("|"))
        concept, module = group or concept, where or module
        for item in names.split():
            name, _, attribute = item.partition("=")
            api.setdefault(concept, {})[name] = (module, (attribute or None) if "=" in item else name)
    return api


API = _api(API_TABLE)

# name -> (module, attribute in it; None: the module itself)
_EXPORTS = {name: where for group in API.values() for name, where in group.items()}


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
