"""RALU presets (spec/RALU.md §8, §9.2, §9.6)."""

import json

import pytest

from ralu_edge import presets
from ralu_edge.errors import UserError


def test_every_spec_preset_is_registered():
    assert set(presets.PRESETS) == {"flux-4x", "flux-5x", "flux-7x", "sd3-2x", "sd3-3x",
                                    "sd3-2x-paper", "sd3-3x-paper"}


def test_flux_7x_uses_the_code_up_ratio_not_the_appendix_one():
    assert presets.get("flux-7x").r == 0.1  # spec/RALU.md §8 "flux-7x r"


def test_stage_lengths_of_the_worked_example_are_64_121_256():
    preset = presets.get("flux-4x")
    assert preset.num_selected(16, 16) == 19
    assert preset.stage_lengths(16, 16) == (64, 121, 256)


@pytest.mark.parametrize("r, length2", [(0.1, 1330), (0.2, 1636), (0.3, 1945)])
def test_stage_lengths_at_1024_pixels_equal_the_spec_table(r, length2):
    preset = presets.RaluPreset("t", (5, 6, 7), (0.3, 0.45, 1.0), (5.0, 2.6, 2.2), 6.3, r)
    assert preset.stage_lengths(64, 64) == (1024, length2, 4096)


def test_selected_count_floors_in_double_precision():
    # spec/RALU.md §9.2: int(M_down·r) in double; 100·0.29 = 28.999… floors to 28.
    preset = presets.RaluPreset("t", (5, 6, 7), (0.3, 0.45, 1.0), (5.0, 2.6, 2.2), 6.3, 0.29)
    assert preset.num_selected(20, 20) == 28


def test_nfe_is_the_sum_of_per_stage_steps():
    assert [presets.get(n).nfe for n in ("flux-4x", "flux-5x", "flux-7x", "sd3-2x", "sd3-3x")] == [18, 15, 10, 20, 12]


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_dict_round_trip_through_json_gives_the_same_preset(name):
    preset = presets.get(name)
    assert presets.RaluPreset.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset


def test_a_stored_sigma_list_that_disagrees_is_rejected():
    data = presets.get("flux-4x").to_dict()
    data["stage_sigmas"][1][2] += 0.01
    with pytest.raises(UserError, match="stage_sigmas"):
        presets.RaluPreset.from_dict(data)


def test_a_preset_entry_missing_a_field_is_rejected():
    data = presets.get("flux-4x").to_dict()
    del data["Z"]
    with pytest.raises(UserError, match="Z"):
        presets.RaluPreset.from_dict(data)


def test_unknown_preset_names_the_valid_choices():
    with pytest.raises(UserError, match="flux-4x.*sd3-3x"):
        presets.get("flux-9x")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(Z=1.9),
        dict(r=1.5),
        dict(e=(0.3, 0.45, 0.9)),
        dict(e=(0.45, 0.3, 1.0)),
        dict(N=(5, 0, 7)),
        dict(N=(5, 6)),
        dict(h=(5.0, -1.0, 2.0)),
    ],
)
def test_invalid_presets_raise_user_errors(kwargs):
    fields = dict(name="bad", N=(5, 6, 7), e=(0.3, 0.45, 1.0), h=(5.0, 2.6, 2.2), Z=6.3, r=0.3)
    fields.update(kwargs)
    with pytest.raises(UserError):
        presets.RaluPreset(**fields)


@pytest.mark.parametrize("grid", [(15, 16), (16, 0), (3, 3)])
def test_odd_or_empty_grids_are_rejected(grid):
    with pytest.raises(UserError, match="even"):
        presets.get("flux-4x").stage_lengths(*grid)


def test_custom_preset_from_the_fit_matches_flux_4x():
    pytest.importorskip("scipy")
    custom = presets.custom([5, 6, 7], [0.3, 0.45, 1.0], r=0.3)
    reference = presets.get("flux-4x")
    assert custom.h == pytest.approx(reference.h, abs=1e-2)
    assert custom.Z == pytest.approx(reference.Z, abs=1e-2)
    assert custom.stage_sigmas[2] == pytest.approx(reference.stage_sigmas[2], abs=1e-3)


def test_custom_preset_rejects_e_not_ending_at_one():
    with pytest.raises(UserError, match="1.0"):
        presets.custom([5, 6, 7], [0.3, 0.45, 0.9])


def test_fit_without_scipy_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError("blocked for the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(UserError, match="pip install scipy"):
        presets.custom([5, 6, 7], [0.3, 0.45, 1.0])
