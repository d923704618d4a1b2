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
    assert "--init cannot be combined with --members" in capsys.readouterr().err


def test_shipped_recipe_file_is_a_valid_config():
    """The shipped model's recipe: tio2.sh trains tio2.yaml, tio2_chebyshev65.yaml and that again with
    --member-seed 1 on one pair baseline, and merges them (tio2_v8); tio2_refit.sh trains the same three
    on the training and test parts, on tio2_v8's baseline, and merges them (the shipped tio2).

    Every step reads into a full TrainConfig; their descriptor sets are the
    shipped model's parts (the two Chebyshev committees share theirs), their
    members add up to its members, their force weights are the ones its
    metadata records.
    """
    import dataclasses
    from pathlib import Path

    from bpnn_jax.cli_model import read_config
    from bpnn_jax.descriptors import descriptor_preset
    from bpnn_jax.model import load_model

    root = Path(__file__).resolve().parent.parent
    script = (root / "experiments" / "recipes" / "tio2.sh").read_text()
    steps_line = next(x for x in script.splitlines() if x.startswith("for step in "))
    steps = [s.split(":") for s in steps_line.removeprefix("for step in ").removesuffix("; do").split()]
    assert steps == [["tio2", "0"], ["tio2_chebyshev65", "0"], ["tio2_chebyshev65", "1"]]
    assert "python -m bpnn_jax merge" in script and script.count("/model.keras") == 1 + len(steps)
    assert 'extra=(--member-seed "$seed")' in script and '"${extra[@]}"' in script
    shipped = load_model("tio2")
    meta = json.loads((root / "bpnn_jax" / "pretrained" / "tio2.json").read_text())
    members = 0
    for name, _ in steps:
        values = read_config(root / "experiments" / "recipes" / f"{name}.yaml")
        assert values.pop("data") == ["../shared/data/tio2"] and values.pop("out") == f"runs/{name}"
        config = dataclasses.replace(TrainConfig(), **values)
        assert tuple(config.hidden) == shipped.hidden and config.seed == 0
        assert list(config.ef_force_weight) == meta["ef_force_weight"]
        spec = descriptor_preset(str(root / config.preset) if config.preset.endswith(".yaml") else config.preset,
                                 shipped.elements, config.cutoff)
        assert spec == shipped.spec.parts[0 if name == "tio2" else 1]
        members += config.members
    assert members == shipped.members == meta["members"] == 15
    # Both halves are trained on the pair baseline the script names, which the shipped model carries.
    from bpnn_jax.repulsion import parse_pair_cutoffs

    line = next(x for x in script.splitlines() if x.startswith("REPULSION="))
    assert script.count('--repulsion "$REPULSION"') == 1  # inside the loop over both halves
    named = dict(item.split(":") for item in line.split("=", 1)[1].split(","))
    assert parse_pair_cutoffs(named, shipped.elements) == shipped.repulsion.cutoffs
    # The refit: the same parts, other member seeds, the test part trained on, tio2_v8's baseline kept.
    refit = (root / "experiments" / "recipes" / "tio2_refit.sh").read_text()
    steps_line = next(x for x in refit.splitlines() if x.startswith("for step in "))
    refit_steps = [s.split(":") for s in steps_line.removeprefix("for step in ").removesuffix("; do").split()]
    assert [p for p, _ in refit_steps] == [p for p, _ in steps] and len({s for _, s in refit_steps[1:]}) == 2
    assert "--repulsion-from \"$MODEL\" --train-on-test" in refit and "MODEL=${MODEL:-tio2_v8}" in refit
    assert load_model("tio2_v8").repulsion == shipped.repulsion
    assert refit.count("/model.keras") == 1 + len(refit_steps) and "python -m bpnn_jax merge" in refit


def test_member_seed_changes_the_committee_not_the_split():
    """--member-seed: another committee (initialisation, shuffling) on the same split (seed)."""
    from bpnn_jax.training import TrainConfig

    base = TrainConfig(members=5, seed=0)
    other = dataclasses.replace(base, member_seed=1)
    assert base.committee_config().seed == 0 and other.committee_config().seed == 1
    assert other.seed == 0  # the split's seed
    assert TrainConfig.from_json(other.to_json()).member_seed == 1
