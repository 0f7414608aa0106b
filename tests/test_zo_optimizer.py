"""ZOAdam, Subspace Gradient refreshes and the resumable state (spec/ZO_PERSONALIZATION.md §5, §6, §8, §11.5)."""

import json

import numpy as np
import pytest

from ralu_edge.errors import UserError
from ralu_edge.zo.estimator import gradient_normalizer
from ralu_edge.rng import rng_for
from ralu_edge.zo.optimizer import PURPOSE_DIRECTIONS, ZOConfig, ZOState, adam_update, init_state, zo_step

DIM, TAU = 48, 16


def _least_squares(dim=DIM, rows=64, seed=0):
    """mean((Aθ − b)²) over query rows, and its minimiser."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((rows, dim)), rng.standard_normal(rows)

    def loss(queries):
        return ((np.asarray(queries, np.float64) @ a.T - b) ** 2).mean(axis=1)

    return loss, np.linalg.lstsq(a, b, rcond=None)[0]


def _run(state, loss, config, steps):
    infos = []
    for _ in range(steps):
        state, info = zo_step(state, loss, config)
        infos.append(info)
    return state, infos


def _assert_states_identical(a: ZOState, b: ZOState):
    arrays_a, meta_a = a.to_arrays()
    arrays_b, meta_b = b.to_arrays()
    assert meta_a == meta_b
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype and arrays_a[key].shape == arrays_b[key].shape
        assert arrays_a[key].tobytes() == arrays_b[key].tobytes(), key


@pytest.mark.parametrize("config", [ZOConfig(tau=TAU), ZOConfig(tau=TAU, subspace_gradient=False),
                                    ZOConfig(tau=TAU, grad_normalization="paper")], ids=["sg", "no-sg", "paper"])
def test_zo_adam_gets_near_the_least_squares_optimum_in_1500_steps(config):
    loss, optimum = _least_squares()
    state = init_state(np.zeros(DIM), config, seed=0)
    best, start = loss(optimum[None])[0], loss(state.theta[None])[0]
    state, infos = _run(state, loss, config, 1500)
    final = loss(state.theta[None])[0]
    assert final - best < 0.1 * (start - best), (start, final, best)
    # Started at 0, i.e. relative distance 1; constant-lr Adam then hovers within its lr-sized noise (~0.1–0.4).
    assert np.linalg.norm(state.theta - optimum) < 0.5 * np.linalg.norm(optimum)
    assert infos[-1].loss < infos[0].loss


def test_first_adam_step_moves_each_coordinate_by_lr_g_over_abs_g_plus_eps():
    config = ZOConfig()
    g = np.array([1.0, -1e-3, 0.0, 5e-2])
    theta, m, v = adam_update(np.zeros(4, np.float32), g, np.zeros(4), np.zeros(4), 1, config)
    np.testing.assert_allclose(theta, -config.lr * g / (np.abs(g) + 1e-3), rtol=1e-6)  # ε_Adam = 1e-3, not 1e-8
    np.testing.assert_allclose(m, 0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(v, 0.001 * g * g, rtol=1e-6)


def test_fp16_emulation_underflows_small_second_moments_as_the_reference_does():
    g = np.array([1e-3, 1e-1])  # 0.001·g² = 1e-9 is below fp16's smallest subnormal (spec §13)
    _, _, v32 = adam_update(np.zeros(2, np.float32), g, np.zeros(2), np.zeros(2), 1, ZOConfig())
    theta16, _, v16 = adam_update(np.zeros(2, np.float32), g, np.zeros(2), np.zeros(2), 1,
                                  ZOConfig(emulate_fp16_state=True))
    assert v32[0] > 0 and v16[0] == 0 and v16[1] > 0
    assert np.array_equal(theta16, theta16.astype(np.float16).astype(np.float32))


def test_subspace_refreshes_after_every_tau_steps_and_feeds_the_normalizer():
    loss, _ = _least_squares()
    config = ZOConfig(tau=TAU)
    state, infos = _run(init_state(np.zeros(DIM), config, seed=1), loss, config, 3 * TAU)
    assert [i.step for i in infos if i.sg_refreshed] == [TAU, 2 * TAU, 3 * TAU]
    assert all(i.sg_rank == 0 and i.d_eff == DIM for i in infos[: TAU - 1])
    assert 0 < infos[TAU - 1].sg_rank < TAU and infos[TAU - 1].d_eff == DIM - infos[TAU - 1].sg_rank
    assert state.d_eff == DIM - state.sg_proj.shape[0]
    # The step after a refresh normalises by d_eff: its estimate is Σcᵢeᵢ / n·√((d_eff + n − 1)/n), then projected.
    e = rng_for(1, PURPOSE_DIRECTIONS, state.step + 1).standard_normal((2, DIM), dtype=np.float32)
    losses = loss(np.concatenate([state.theta[None], state.theta[None] + np.float32(1e-3) * e]))
    raw = ((losses[1:] - losses[0]) / 1e-3) @ e.astype(np.float64) / gradient_normalizer(2, state.d_eff)
    p = state.sg_proj.astype(np.float64)
    _, info = zo_step(state, loss, config)
    assert info.grad_norm == pytest.approx(np.linalg.norm(raw - (p @ raw) @ p), rel=1e-9)


def test_without_subspace_gradient_nothing_is_ever_projected():
    loss, _ = _least_squares()
    config = ZOConfig(tau=TAU, subspace_gradient=False)
    state, infos = _run(init_state(np.zeros(DIM), config, seed=1), loss, config, 2 * TAU)
    assert not any(i.sg_refreshed for i in infos) and state.sg_proj.shape == (0, DIM) and state.d_eff == DIM


def test_same_seed_same_trajectory_other_seed_other_trajectory():
    loss, _ = _least_squares()
    config = ZOConfig(tau=TAU)
    a, _ = _run(init_state(np.zeros(DIM), config, seed=5), loss, config, TAU + 3)
    b, _ = _run(init_state(np.zeros(DIM), config, seed=5), loss, config, TAU + 3)
    c, _ = _run(init_state(np.zeros(DIM), config, seed=6), loss, config, TAU + 3)
    _assert_states_identical(a, b)
    assert not np.array_equal(a.theta, c.theta)


def _through_checkpoint(state: ZOState) -> ZOState:
    """to_arrays → safetensors (if installed; else plain copies) with JSON-string metadata → from_arrays."""
    arrays, meta = state.to_arrays()
    strings = {key: json.dumps(value) for key, value in meta.items()}  # safetensors metadata is str → str
    try:
        from safetensors.numpy import load, save
    except ImportError:
        loaded = {key: np.array(value) for key, value in arrays.items()}
    else:
        loaded = load(save(arrays, metadata=strings))
    return ZOState.from_arrays(loaded, {key: json.loads(value) for key, value in strings.items()})


@pytest.mark.parametrize("config", [ZOConfig(tau=TAU), ZOConfig(tau=TAU, emulate_fp16_state=True)],
                         ids=["fp32", "fp16-emulation"])
@pytest.mark.parametrize("stop_at", [0, 5, TAU - 1, TAU, TAU + 1])
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(config, stop_at):
    loss, _ = _least_squares()
    total = 2 * TAU + 3
    start = init_state(np.full(DIM, 0.25), config, seed=11)
    uninterrupted, _ = _run(start, loss, config, total)
    first, _ = _run(start, loss, config, stop_at)
    resumed = _through_checkpoint(first)
    _assert_states_identical(resumed, first)
    finished, _ = _run(resumed, loss, config, total - stop_at)
    _assert_states_identical(finished, uninterrupted)


def test_state_arrays_use_the_spec_names_and_float32():
    state = init_state(np.ones(DIM), ZOConfig(tau=TAU), seed=3)
    arrays, meta = state.to_arrays()
    assert set(arrays) == {"theta", "adam_m", "adam_v", "sg_buffer", "sg_proj"}
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert arrays["sg_buffer"].shape == (TAU, DIM) and arrays["sg_proj"].shape == (0, DIM)
    assert meta["step"] == 0 and meta["d_eff"] == DIM and meta["base_seed"] == 3
    json.dumps(meta)


def test_a_step_leaves_its_input_state_untouched():
    loss, _ = _least_squares()
    config = ZOConfig(tau=TAU)
    state = init_state(np.zeros(DIM), config, seed=0)
    before = {k: v.copy() for k, v in state.to_arrays()[0].items()}
    zo_step(state, loss, config)
    assert all(np.array_equal(before[k], v) for k, v in state.to_arrays()[0].items())
    with pytest.raises(ValueError):
        state.theta[0] = 1.0


def test_damaged_or_foreign_checkpoints_and_a_changed_tau_are_user_errors():
    state = init_state(np.zeros(DIM), ZOConfig(tau=TAU), seed=0)
    arrays, meta = state.to_arrays()
    with pytest.raises(UserError, match="format"):
        ZOState.from_arrays(arrays, {**meta, "format": "something-else"})
    with pytest.raises(UserError, match="incomplete or damaged"):
        ZOState.from_arrays({k: v for k, v in arrays.items() if k != "adam_v"}, meta)
    with pytest.raises(UserError, match="incomplete or damaged"):
        ZOState.from_arrays({**arrays, "adam_m": np.zeros(DIM + 1, np.float32)}, meta)
    with pytest.raises(UserError, match="tau"):
        zo_step(state, lambda q: np.zeros(len(q)), ZOConfig(tau=TAU * 2))


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(mu=-1e-3), dict(n=0), dict(tau=1), dict(nu=1.0),
                                    dict(beta2=1.0), dict(adam_eps=float("nan")), dict(grad_normalization="x")])
def test_invalid_settings_are_user_errors(kwargs):
    with pytest.raises(UserError):
        ZOConfig(**kwargs)


def test_config_defaults_are_the_spec_table_and_round_trip():
    config = ZOConfig()
    assert (config.lr, config.mu, config.n, config.tau, config.nu) == (1e-2, 1e-3, 2, 128, 1e-3)  # spec §12
    assert (config.beta1, config.beta2, config.adam_eps, config.grad_normalization) == (0.9, 0.999, 1e-3, "reference")
    assert ZOConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
