"""Fine-tuning a trained committee on new data (``train DATA --init MODEL``).

* the run starts exactly where the model is: with a learning rate of ~0 the result predicts what
  the model predicts (its weights, descriptor and energy statistics, references are kept);
* the committee, networks and descriptors come from the model, whatever the new data would derive;
* a few epochs on data the model has not seen lower its error on them;
* a model and data that do not fit together stop with a message.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from bpnn_jax.calculators.ase import BPNNCalculator
from bpnn_jax.cli import main
from bpnn_jax.model import load_model


def frames(n: int, a0: float, seed: int, element: str = "Cu") -> list:
    """Rattled 2x2x2 fcc cells of lattice constant ~a0 (Å), labelled by EMT."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk(element, "fcc", a=a0 * (0.98 + 0.04 * rng.random()), cubic=True).repeat((2, 2, 2))
        a.positions += rng.normal(0.0, 0.08, a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def energies_per_atom(model_path, atoms) -> np.ndarray:
    calc = BPNNCalculator(load_model(str(model_path)), warn_extrapolation=False)
    return np.array([calc.get_potential_energy(a.copy()) / len(a) for a in atoms])


def errors(model_path, atoms) -> tuple[float, float]:
    """Energy RMSE (eV/atom) and force RMSE (eV/Å) of a model on labelled structures."""
    calc = BPNNCalculator(load_model(str(model_path)), warn_extrapolation=False)
    de, df = [], []
    for a in atoms:
        b = a.copy()
        b.calc = calc
        de.append((b.get_potential_energy() - a.get_potential_energy()) / len(a))
        df.append((b.get_forces() - a.get_forces()).ravel())
    return float(np.sqrt(np.mean(np.square(de)))), float(np.sqrt(np.mean(np.square(np.concatenate(df)))))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small committee trained on Cu near 3.61 Å, and Cu data compressed by 7 % it has not seen."""
    root = tmp_path_factory.mktemp("fine_tune")
    ase.io.write(root / "cu.extxyz", frames(30, 3.61, 0), format="extxyz")
    new = frames(30, 3.35, 1)
    ase.io.write(root / "compressed.extxyz", new, format="extxyz")
    args = ["train", str(root / "cu.extxyz"), "--out", str(root / "base"), "--members", "3", "--hidden", "12",
            "--ef-epochs", "40", "--quiet"]
    assert main(args) == 0
    return root, new


def test_a_fine_tuning_run_starts_from_the_model(base, capsys):
    root, new = base
    out = root / "still"
    assert main(["train", str(root / "compressed.extxyz"), "--out", str(out), "--init", str(root / "base" / "model.keras"),
                 "--ef-epochs", "2", "--ef-lr", "1e-12", "--ef-final-lr", "1e-12", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuning" in printed and "committee of 3" in printed
    model, start = load_model(str(out / "model.keras")), load_model(str(root / "base" / "model.keras"))
    assert (model.members, model.hidden, model.spec.to_config()) == (start.members, start.hidden,
                                                                     start.spec.to_config())
    assert model.reference_energies == start.reference_energies
    np.testing.assert_allclose(energies_per_atom(out / "model.keras", new),
                               energies_per_atom(root / "base" / "model.keras", new), rtol=0, atol=1e-5)


def test_fine_tuning_lowers_the_error_on_the_new_data(base):
    root, new = base
    out = root / "tuned"
    assert main(["train", str(root / "compressed.extxyz"), "--out", str(out), "--init",
                 str(root / "base" / "model.keras"), "--ef-epochs", "60", "--ef-lr", "3e-3", "--quiet"]) == 0
    (e0, f0), (e1, f1) = errors(root / "base" / "model.keras", new), errors(out / "model.keras", new)
    assert e1 < e0 and f1 < 0.5 * f0


def test_a_fine_tuning_run_stopped_early_resumes_on_the_models_descriptors(base, capsys):
    """--time-limit stops a fine-tuning run after its first epoch (checkpoints/last.keras); --resume ends it,
    still on the model's descriptors and statistics."""
    root, new = base
    out = root / "resumed"
    args = ["train", str(root / "compressed.extxyz"), "--out", str(out), "--init", str(root / "base" / "model.keras"),
            "--ef-epochs", "4", "--quiet"]
    assert main([*args, "--time-limit", "0.0001"]) == 0
    assert (out / "checkpoints" / "last.keras").exists() and not (out / "model.keras").exists()
    assert "continue with --resume" in capsys.readouterr().out
    assert main(["train", "--out", str(out), "--resume", "--time-limit", "60", "--quiet"]) == 0
    assert "model saved to" in capsys.readouterr().out
    model, start = load_model(str(out / "model.keras")), load_model(str(root / "base" / "model.keras"))
    assert model.spec.to_config() == start.spec.to_config() and model.members == start.members
    np.testing.assert_array_equal(np.asarray(model.sf_mean.value), np.asarray(start.sf_mean.value))


def test_fine_tuning_refuses_what_does_not_fit(base, tmp_path, capsys):
    root, _ = base
    model = str(root / "base" / "model.keras")
    assert main(["train", str(root / "compressed.extxyz"), "--out", str(tmp_path / "a"), "--init", model,
                 "--members", "5", "--quiet"]) == 2
    assert "the model has 3 members" in capsys.readouterr().err
    ase.io.write(tmp_path / "ni.extxyz", frames(12, 3.52, 2, "Ni"), format="extxyz")
    assert main(["train", str(tmp_path / "ni.extxyz"), "--out", str(tmp_path / "b"), "--init", model,
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ni.extxyz" in err and "element Ni is not one of the model's ['Cu']" in err
