"""Shared pytest fixtures.

Data locations can be overridden with environment variables:

* ``BPNN_DATA_DIR``: directory of the TiO2 XSF files
  (default ``<repo>/../shared/data/tio2``);
* ``BPNN_ORACLE``: reference symmetry-function file
  (default ``<repo>/../shared/oracles/aenet_behler2011_tio2.npz``).

A missing data file makes the tests that need it fail (never skip).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Representative structures: all sizes, thin 6-atom cells, 95-atom cells.
SMALL_FILE_NAMES = (
    "structure0001.xsf",  # 24 atoms, Ti8O16
    "structure1061.xsf",  # 6 atoms, shortest cell vector 2.97 Å
    "structure1632.xsf",  # 6 atoms, shortest cell vector 2.36 Å
    "structure0401.xsf",  # 22 atoms
    "structure0652.xsf",  # 23 atoms
    "structure7263.xsf",  # 46 atoms
    "structure7473.xsf",  # 47 atoms
    "structure7489.xsf",  # 94 atoms
    "structure7513.xsf",  # 95 atoms
    "structure7514.xsf",  # 95 atoms
)


def _path_from_env(var: str, default: Path, what: str) -> Path:
    path = Path(os.environ.get(var, str(default))).expanduser()
    if not path.exists():
        pytest.fail(
            f"{what} not found at {path}; set {var} to its location "
            f"(default {default})",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory of the TiO2 XSF data set (``BPNN_DATA_DIR``)."""
    path = _path_from_env("BPNN_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "tio2", "TiO2 data directory")
    if not path.is_dir():
        pytest.fail(f"BPNN_DATA_DIR={path} is not a directory", pytrace=False)
    return path


@pytest.fixture(scope="session")
def oracle_path() -> Path:
    """The aenet reference symmetry-function file (``BPNN_ORACLE``)."""
    return _path_from_env(
        "BPNN_ORACLE",
        REPO_ROOT.parent / "shared" / "oracles" / "aenet_behler2011_tio2.npz",
        "aenet oracle file",
    )


@pytest.fixture(scope="session")
def small_files(data_dir: Path) -> list[Path]:
    """About 10 representative XSF files (6 to 95 atoms, thin cells)."""
    files = [data_dir / name for name in SMALL_FILE_NAMES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pytest.fail(f"representative XSF files missing from {data_dir}: {', '.join(missing)}", pytrace=False)
    return files


@pytest.fixture(scope="session")
def make_random_model():
    """Factory for small float64 BPNNs with random weights (model/calculator tests).

    ``make_random_model(atoms_list, hidden=(8, 8), seed=0)`` sets the SF
    statistics from ``atoms_list``; SF stds are floored (pooled std, 0.05)
    so that a handful of structures cannot give near-zero stds, which would
    make the random network wildly non-linear; the energy scale is 0.5 eV
    (forces of a few tenths of an eV/Å).
    """
    import keras
    import numpy as np

    from bpnn_jax.batch import prepare_structures
    from bpnn_jax.descriptors import SymmetryFunctionSet
    from bpnn_jax.io import REFERENCE_ENERGIES_TIO2
    from bpnn_jax.model import BPNN
    from bpnn_jax.training import compute_statistics, featurize_host

    def factory(atoms_list, *, hidden=(8, 8), seed=0):
        spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
        keras.utils.set_random_seed(seed)
        model = BPNN(spec.to_config(), hidden=hidden, dtype="float64", reference_energies=REFERENCE_ENERGIES_TIO2)
        hosts = prepare_structures(atoms_list, spec.elements, spec.cutoff, energy_offsets=REFERENCE_ENERGIES_TIO2)
        sf = featurize_host(hosts, spec, dtype=np.float64)
        stats = compute_statistics(sf, [h.species for h in hosts], [h.energy for h in hosts], len(spec.elements))
        pooled = np.concatenate(sf).std(axis=0)
        stats["sf_std"] = np.maximum(np.maximum(stats["sf_std"], pooled[None, :]), 0.05)
        stats["energy_scale"] = 0.5
        model.set_statistics(**stats)
        return model

    return factory


@pytest.fixture(scope="session")
def make_random_committee():
    """Factory for float64 committees with random weights, built as the Jacobian trainer builds them.

    ``make_random_committee(hosts, spec, members=2, seed=0, hidden=(8, 8),
    energy_scale=0.5, shift_offset=0.0, pooled_std_floor=False, references=TiO2's)``
    returns a dict: ``sf`` (per-structure descriptors), ``stats`` (SF statistics
    of ``hosts``, SF stds floored at 0.05, and with ``pooled_std_floor`` also at
    the std over all atoms, so that no element's column is scaled up by much;
    the given energy scale, the per-element energy
    shifts moved by ``shift_offset`` eV), ``params`` (the trainer's member-axis
    parameters) and ``model`` (the same committee as a Keras model).
    """
    import jax
    import numpy as np

    from bpnn_jax import jacobian_training as jt
    from bpnn_jax.io import REFERENCE_ENERGIES_TIO2
    from bpnn_jax.training import compute_statistics, featurize_host

    def factory(hosts, spec, *, members=2, seed=0, hidden=(8, 8), energy_scale=0.5, shift_offset=0.0,
                pooled_std_floor=False, references=REFERENCE_ENERGIES_TIO2):
        sf = featurize_host(hosts, spec, dtype=np.float64)
        stats = compute_statistics(sf, [h.species for h in hosts], [h.energy for h in hosts], spec.n_elements)
        if pooled_std_floor:
            stats["sf_std"] = np.maximum(stats["sf_std"], np.concatenate(sf).std(axis=0)[None, :])
        stats["sf_std"] = np.maximum(stats["sf_std"], 0.05)
        stats["energy_scale"] = energy_scale
        stats["energy_shift"] = np.asarray(stats["energy_shift"]) + shift_offset
        params = jt.init_params(jax.random.PRNGKey(seed), members, spec.n_elements, spec.n_functions, hidden,
                                "float64")
        model = jt.to_model(params, stats, spec, jt.CommitteeConfig(members=members, hidden=hidden), references,
                            dtype="float64")
        return dict(sf=sf, stats=stats, params=params, model=model)

    return factory


#: 40 six-atom structures (one padded shape) with cohesive energy below the
#: training default ``max_energy`` = 1 eV/atom, spread over the data set.
SIX_ATOM_FILES = (
    "structure1061.xsf", "structure1099.xsf", "structure1140.xsf", "structure1195.xsf", "structure1223.xsf",
    "structure1264.xsf", "structure1328.xsf", "structure1367.xsf", "structure1398.xsf", "structure1437.xsf",
    "structure1476.xsf", "structure1506.xsf", "structure1534.xsf", "structure1573.xsf", "structure1605.xsf",
    "structure1655.xsf", "structure1706.xsf", "structure1738.xsf", "structure1786.xsf", "structure1813.xsf",
    "structure1847.xsf", "structure1880.xsf", "structure1937.xsf", "structure6373.xsf", "structure6414.xsf",
    "structure6486.xsf", "structure6527.xsf", "structure6558.xsf", "structure6590.xsf", "structure6614.xsf",
    "structure6638.xsf", "structure6670.xsf", "structure6696.xsf", "structure6737.xsf", "structure6769.xsf",
    "structure6798.xsf", "structure6850.xsf", "structure6871.xsf", "structure6962.xsf", "structure7000.xsf",
)


@pytest.fixture(scope="session")
def six_atom_files(data_dir) -> list[Path]:
    """Paths of :data:`SIX_ATOM_FILES`: small, cheap training data (one padded shape)."""
    return [data_dir / name for name in SIX_ATOM_FILES]


@pytest.fixture(scope="session")
def train_and_evaluate():
    """``run(data, run_dir, *flags) -> metrics``: ``train DATA --out RUN_DIR --quiet --test-fraction 0.1 FLAGS``, then
    ``evaluate`` of the run's model on its own test split; returns the ``--json`` report (dict)."""
    import json

    from bpnn_jax.cli import main

    def run(data, run_dir, *flags) -> dict:
        run_dir = Path(run_dir)
        # A test split of its own (small data sets hold none by default).
        assert main(["train", str(data), "--out", str(run_dir), "--quiet", "--test-fraction", "0.1", *flags]) == 0
        out = run_dir / "metrics.json"
        assert main(["evaluate", str(run_dir / "model.keras"), "--split", str(run_dir / "split.json"), "--json",
                     str(out)]) == 0
        return json.loads(out.read_text())

    return run
