"""Model cards of the shipped models (bpnn_jax/model/card.py): one schema, and the card agrees with the model."""

import copy

import pytest

from bpnn_jax.model import load_model
from bpnn_jax.model.card import check_card, read_card, shipped_models

#: The shipped models: the default and its held-out twin (the same recipe without the test split).
SHIPPED = ["tio2", "tio2_v8"]


def test_exactly_the_two_models_ship():
    assert shipped_models() == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_card_follows_the_schema_and_its_recipe_files_are_unedited(name):
    card = read_card(name)
    assert check_card(card) == []
    assert card["name"] == name


@pytest.mark.parametrize("name", SHIPPED)
def test_card_describes_the_model(name):
    card, model = read_card(name), load_model(name)
    cfg = model.get_config()
    assert card["members"] == cfg["members"]
    assert card["elements"] == sorted(cfg["descriptor"]["elements"])
    assert card["uncertainty_threshold_ev_atom"] == pytest.approx(cfg["uncertainty_threshold"], rel=1e-12)
    if card["repulsion"] is None:
        assert cfg["repulsion"] is None
    else:
        assert card["repulsion"]["cutoffs_a"] == cfg["repulsion"]["cutoffs"]


def test_the_default_model_points_at_its_held_out_twin():
    """tio2 trained on the test split, so it has no test figures; tio2_v8 (the same recipe on less data) has."""
    assert "none" in read_card("tio2")["test"] and "tio2_v8" in read_card("tio2")["test"]["none"]
    assert read_card("tio2_v8")["test"]["n_structures"] == 693
    assert read_card("tio2")["recipe"]["files"].keys() >= {"experiments/recipes/tio2.yaml"}


def test_check_card_finds_what_is_wrong(tmp_path):
    card = read_card("tio2_v8")
    broken = copy.deepcopy(card)
    del broken["summary"]
    assert check_card(broken) == ["missing field 'summary'"]
    broken = copy.deepcopy(card)
    broken["validation"]["force_mae_ev_a"] = -1.0
    del broken["test"]["energy_rmse_mev_atom"]
    problems = check_card(broken)
    assert any("test: missing energy_rmse_mev_atom" in p for p in problems)
    assert any("validation.force_mae_ev_a" in p for p in problems)
    # An edited recipe file is caught by its hash.
    for rel in card["recipe"]["files"]:
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("# edited\n")
    problems = check_card(card, root=tmp_path)
    assert len(problems) == len(card["recipe"]["files"]) and all("was edited" in p for p in problems)
