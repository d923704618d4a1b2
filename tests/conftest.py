"""Shared pytest fixtures.

Data locations can be overridden with environment variables:

* ``BPNN_DATA_DIR``: directory of the TiO2 XSF files
  (default ``<repo>/../shared/data/tio2``);
* ``BPNN_ORACLE``: reference symmetry-function file
  (default ``<repo>/../shared/oracles/aenet_behler2011_tio2.npz``).

A missing data file makes the tests that need it fail (never skip).

Tiers: tests that read ``../shared`` (through the fixtures in
:data:`SHARED_FIXTURES`) are marked ``shared`` at collection; the default
``pytest`` run leaves them out, ``pytest -m "not slow and not gpu and not
lammps"`` (the README's test command, CI) runs both tiers in one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: The bundled quick-start sample (200 structures of the TiO2 set): the first tier's data.
SAMPLE_DIR = REPO_ROOT / "bpnn_jax" / "data" / "tio2_sample"

#: Representative structures of the sample: all sizes, thin 6-atom cells, 94/95-atom cells.
SMALL_FILE_NAMES = (
    "structure0001.xsf",  # 24 atoms, Ti8O16
    "structure1061.xsf",  # 6 atoms, shortest cell vector 2.97 Å
    "structure1134.xsf",  # 6 atoms, shortest cell vector 2.78 Å
    "structure0401.xsf",  # 22 atoms
    "structure0652.xsf",  # 23 atoms
    "structure7263.xsf",  # 46 atoms
    "structure7473.xsf",  # 47 atoms
    "structure7489.xsf",  # 94 atoms
    "structure7513.xsf",  # 95 atoms
    "structure7515.xsf",  # 95 atoms
)


#: Fixtures that read ``../shared``: a test using any of them belongs to the second tier (marker ``shared``).
SHARED_FIXTURES = frozenset({"data_dir", "oracle_path"})


def pytest_collection_modifyitems(config, items):
    """Mark the tests that read ``../shared`` (directly or through another fixture) as ``shared``."""
    for item in items:
        if SHARED_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free the compiled XLA programs of each test module when it ends.

    Every live XLA:CPU executable holds ~18 memory mappings; the whole suite
    in one process keeps thousands of programs alive and would run into
    the kernel's ``vm.max_map_count`` (65 530), where LLVM's JIT segfaults
    inside a compilation (docs/testing.md).  Later modules recompile what
    they need (from the persistent cache).
    """
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


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
def small_files() -> list[Path]:
    """10 representative XSF files of the bundled sample (6 to 95 atoms, thin cells)."""
    return [SAMPLE_DIR / name for name in SMALL_FILE_NAMES]


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

    from bpnn_jax.descriptors import SymmetryFunctionSet
    from bpnn_jax.descriptors.batch import prepare_structures
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

    from bpnn_jax.io import REFERENCE_ENERGIES_TIO2
    from bpnn_jax.training import compute_statistics, featurize_host
    from bpnn_jax.training import jacobian as jt

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


#: The sample's 40 six-atom structures (one padded shape; all near equilibrium).
SIX_ATOM_FILES = (
    "structure1061.xsf", "structure1102.xsf", "structure1134.xsf", "structure1197.xsf", "structure1228.xsf",
    "structure1266.xsf", "structure1314.xsf", "structure1345.xsf", "structure1376.xsf", "structure1409.xsf",
    "structure1438.xsf", "structure1466.xsf", "structure1499.xsf", "structure1531.xsf", "structure1575.xsf",
    "structure1658.xsf", "structure1687.xsf", "structure1717.xsf", "structure1749.xsf", "structure1867.xsf",
    "structure1909.xsf", "structure1965.xsf", "structure6375.xsf", "structure6407.xsf", "structure6435.xsf",
    "structure6465.xsf", "structure6494.xsf", "structure6524.xsf", "structure6554.xsf", "structure6589.xsf",
    "structure6617.xsf", "structure6644.xsf", "structure6676.xsf", "structure6704.xsf", "structure6740.xsf",
    "structure6821.xsf", "structure6980.xsf", "structure7016.xsf", "structure7047.xsf", "structure7219.xsf",
)


@pytest.fixture(scope="session")
def six_atom_files() -> list[Path]:
    """Paths of :data:`SIX_ATOM_FILES`: small, cheap training data (one padded shape)."""
    return [SAMPLE_DIR / name for name in SIX_ATOM_FILES]


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
