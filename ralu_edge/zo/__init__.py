"""Zeroth-order personalization (ZOODiP-style Textual Inversion; spec/ZO_PERSONALIZATION.md): the one-sided
random-gradient estimator (`estimator`, §4), Subspace Gradient (`subspace`, §6), ZOAdam with a resumable state
(`optimizer`, §5, §8, §11.5) and Partial Uniform Timestep Sampling with the per-step draws of a flow-matching
trainer (`timesteps`, §7, §10.3, §11). Depends on numpy only: no torch, no onnxruntime.

A trainer's loop, given a loss over candidate embeddings (ralu_runtime binds it to ORT graphs):

    state = init_state(theta0, config, seed)
    while state.step < steps:
        draw = draw_step(seed, state.step + 1, num_images=..., latent_shape=..., puts=..., image_pixels=...)
        pair = training_pair(draw, means, logvars, shift_factor=..., scaling_factor=...)
        state, info = zo_step(state, loss_fn_for(pair, draw.sigmas), config)  # velocity_mse per query
"""

from ralu_edge.zo.estimator import (
    LossFn, RgeEstimate, estimate_gradient, gradient_normalizer, perturbation_directions, query_points,
    rge_gradient,
)
from ralu_edge.zo.optimizer import StepInfo, ZOConfig, ZOState, adam_update, init_state, zo_step
from ralu_edge.zo.subspace import low_variance_directions, project_out, push_history, standardize_columns
from ralu_edge.zo.timesteps import (
    NO_PUTS, PutsConfig, StepDraw, TrainingPair, draw_step, flow_matching_pair, posterior_latents, sample_indices,
    sample_sigmas, shift_sigmas, sigmas_for_ddpm_timesteps, training_pair, velocity_mse,
)

__all__ = [
    "LossFn", "RgeEstimate", "estimate_gradient", "gradient_normalizer", "perturbation_directions", "query_points",
    "rge_gradient", "StepInfo", "ZOConfig", "ZOState", "adam_update", "init_state", "zo_step",
    "low_variance_directions", "project_out", "push_history", "standardize_columns", "NO_PUTS", "PutsConfig",
    "StepDraw", "draw_step", "flow_matching_pair", "posterior_latents", "sample_indices", "sample_sigmas",
    "shift_sigmas", "sigmas_for_ddpm_timesteps", "TrainingPair", "training_pair", "velocity_mse",
]
