"""``train --config FILE.yaml``: every option from a file, the resolved config in the run, flags override."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import yaml

import bpnn_jax  # noqa: F401
from bpnn_jax.cli import main
from bpnn_jax.model import load_model
from bpnn_jax.training import TrainConfig


def _train_args(files, out):
    return ["train", *files, "--out", str(out), "--members", "2", "--hidden", "6", "--ef-epochs", "2",
            "--ef-force-weight", "1e-3,2e-3", "--weight-decay", "0", "--quiet"]


def test_config_round_trip_reproduces_the_run(six_atom_files, tmp_path):
    files = [str(p) for p in six_atom_files[:12]]
    assert main(_train_args(files, tmp_path / "a")) == 0
    cfg_a = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert cfg_a["data"] == files and cfg_a["out"] == str(tmp_path / "a")
    assert cfg_a["members"] == 2 and cfg_a["ef_force_weight"] == [1e-3, 2e-3] and cfg_a["hidden"] == [6]
    # The file alone repeats the run (the run directory overridden by a flag).
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    cfg_b = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert {k: v for k, v in cfg_b.items() if k != "out"} == {k: v for k, v in cfg_a.items() if k != "out"}
    ma, mb = load_model(tmp_path / "a" / "model.keras"), load_model(tmp_path / "b" / "model.keras")
    for x, y in zip(ma.get_weights(), mb.get_weights()):
        np.testing.assert_array_equal(x, y)
    # Flags override the file.
    assert main(["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out", str(tmp_path / "c"),
                 "--ef-epochs", "3", "--quiet"]) == 0
    cfg_c = TrainConfig.from_json(json.loads((tmp_path / "c" / "config.json").read_text()))
    assert cfg_c.ef_epochs == 3 and cfg_c.members == 2


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("members: 2\nno_such_option: 1\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "no_such_option" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("members: [2\n")
    assert main(["train", "--config", str(broken), "--out", str(tmp_path / "r")]) == 2
    assert str(broken) in capsys.readouterr().err
    nodata = tmp_path / "nodata.yaml"
    nodata.write_text("members: 2\n")
    assert main(["train", "--config", str(nodata), "--out", str(tmp_path / "r")]) == 2
    assert "no training data" in capsys.readouterr().err
    assert main(["train", "x.xsf", "--out", str(tmp_path / "r"), "--members", "2", "--init", "tio2"]) == 2
    assert "the model has 15 members, --members asks for 2" in capsys.readouterr().err


def test_shipped_recipe_configs_give_the_shipped_model():
    """The recipe files of the shipped model (its card lists them with their hashes, which
    tests/model/test_card.py checks): tio2.yaml (one committee) and tio2_chebyshev65.yaml (two, other
    member seeds) read into full TrainConfigs whose descriptor sets, networks, force weights and
    committee sizes are the shipped model's.
    """
    from pathlib import Path

    from bpnn_jax.cli.train import read_config
    from bpnn_jax.descriptors import descriptor_preset
    from bpnn_jax.model import load_model
    from bpnn_jax.model.card import read_card

    root = Path(__file__).resolve().parents[2]
    shipped, card = load_model("tio2"), read_card("tio2")
    committees = {"experiments/recipes/tio2.yaml": (1, 0), "experiments/recipes/tio2_chebyshev65.yaml": (2, 1)}
    assert set(committees) <= set(card["recipe"]["files"])
    members = 0
    for rel, (count, part) in committees.items():
        values = read_config(root / rel)
        assert values.pop("data") == ["../shared/data/tio2"]
        config = dataclasses.replace(TrainConfig(), **{k: v for k, v in values.items() if k != "out"})
        assert tuple(config.hidden) == shipped.hidden and config.seed == 0
        assert list(config.ef_force_weight) == card["details"]["ef_force_weight"]
        spec = descriptor_preset(str(root / config.preset) if config.preset.endswith(".yaml") else config.preset,
                                 shipped.elements, config.cutoff)
        assert spec == shipped.spec.parts[part]
        members += count * config.members
    assert members == shipped.members == card["members"] == 15
    # tio2 is tio2_v8's recipe on more data, on tio2_v8's baseline (--repulsion-from tio2_v8).
    assert load_model("tio2_v8").repulsion == shipped.repulsion


def test_member_seed_changes_the_committee_not_the_split():
    """--member-seed: another committee (initialisation, shuffling) on the same split (seed)."""
    from bpnn_jax.training import TrainConfig

    base = TrainConfig(members=5, seed=0)
    other = dataclasses.replace(base, member_seed=1)
    assert base.committee_config().seed == 0 and other.committee_config().seed == 1
    assert other.seed == 0  # the split's seed
    assert TrainConfig.from_json(other.to_json()).member_seed == 1


def test_config_files_of_the_keras_stages_still_load(tmp_path):
    """Old config.json / config.yaml files hold the options of the removed Keras stages: they load, the
    options are dropped, and a warning names those that were set to other than their default."""
    import warnings

    import pytest

    from bpnn_jax.cli.train import read_config

    old = {**TrainConfig(members=2).to_json(), "energy_epochs": 50, "lbfgs_steps": 1000, "force_epochs": 0,
           "learning_rate": 1e-3, "force_weight": 1e-2, "data_parallel": False}
    with pytest.warns(UserWarning, match=r"run/config.json: ignored .*energy_epochs \(now ef_epochs.*"
                                         r"force_weight \(now ef_force_weight\)") as record:
        config = TrainConfig.from_json(old, "run/config.json")
    message = str(record[0].message)
    assert "lbfgs_steps" not in message and "learning_rate" not in message  # their defaults: nothing was asked
    assert config.members == 2 and not hasattr(config, "energy_epochs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig.from_json({**TrainConfig().to_json(), "lbfgs_steps": 1000, "force_subset": None})
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"members": 3, "energy_epochs": 1000, "lr": 5e-4, "ef_epochs": 7}))
    with pytest.warns(UserWarning, match=r"old.yaml: ignored .*learning_rate \(now ef_learning_rate\)"):
        values = read_config(path)
    assert values == {"members": 3, "ef_epochs": 7}
