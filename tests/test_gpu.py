"""GPU checks (``pytest -m gpu`` on a machine with a CUDA GPU; deselected by default).

* JAX's default device is a GPU (a CPU-only run of this marker fails loudly);
* symmetry functions computed on the GPU in float64 match aenet's oracle to
  1e-10 on ~130 structures (thin cells and 95-atom cells included);
* the GPU and the host CPU give the same float64 energies and forces for the
  shipped model, and the GPU forces equal -dE/dR by central differences;
* descriptor Jacobians (force training on cached Jacobians) agree between
  the GPU and the CPU;
* a few energy+force training steps on the GPU lower the loss.
"""

from __future__ import annotations

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (JAX backend, float64)
import jax

from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.descriptors import SymmetryFunctionSet
from bpnn_jax.descriptors.featurize import featurize
from bpnn_jax.io import read_xsf
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    devices = [d for d in jax.devices() if d.platform == "gpu"]
    if not devices:
        pytest.fail(f"-m gpu needs a GPU; JAX sees only {jax.devices()}", pytrace=False)
    assert jax.default_backend() == "gpu"
    return devices[0]


def test_descriptors_on_gpu_match_aenet(gpu, oracle_path, data_dir):
    with np.load(oracle_path, allow_pickle=False) as z:
        oracle = {k: z[k] for k in ("files", "n_atoms", "atom_offset", "sf")}
    n = oracle["n_atoms"]
    picked = sorted(set(range(0, len(n), 8)) | set(np.flatnonzero(n >= 47).tolist()))
    atoms = [read_xsf(data_dir / str(oracle["files"][k])) for k in picked]
    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    values = featurize(atoms, spec, dtype=np.float64)
    worst = 0.0
    for k, v in zip(picked, values):
        off = int(oracle["atom_offset"][k])
        worst = max(worst, float(np.abs(v - oracle["sf"][off: off + int(n[k])]).max()))
    assert worst <= 1e-10, worst


def test_descriptor_jacobians_on_gpu_match_cpu(gpu, data_dir):
    """Force-training Jacobians (the committee trainer's): GPU and host CPU agree in float64."""
    from bpnn_jax.descriptors.featurize import descriptor_jacobians

    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    # A 2.36 Å thin cell and a 24-atom cell.
    atoms = [read_xsf(data_dir / "structure1632.xsf"), read_xsf(data_dir / "structure0001.xsf")]
    on_gpu = descriptor_jacobians(atoms, spec, dtype=np.float64)
    with jax.default_device(jax.devices("cpu")[0]):
        on_cpu = descriptor_jacobians(atoms, spec, dtype=np.float64)
    for g, c in zip(on_gpu, on_cpu):
        assert g.shape == c.shape == (len(c), len(c), spec.n_functions, 3)
        assert np.abs(g - c).max() <= 1e-10 * np.abs(c).max()


def _inputs(model, atoms):
    h = prepare_structures([atoms], model.elements, model.spec.cutoff)[0]
    return collate([h], 1, bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots, dtype=np.float64).inputs(model.elements)


def _float64(shipped):
    """The same network with float64 weights and arithmetic."""
    from bpnn_jax.model import BPNN

    model = BPNN.from_config({**shipped.get_config(), "dtype": "float64"})
    model.set_weights([np.asarray(w, np.float64) for w in shipped.get_weights()])
    return model


@pytest.fixture(scope="module")
def model64(gpu):
    from bpnn_jax.model import load_model

    model = _float64(load_model("tio2"))
    assert all(w.dtype == "float64" for w in model.weights)
    return model


_CPU_SCRIPT = """
import json, sys
import numpy as np
import bpnn_jax, jax
from bpnn_jax.model import BPNN, load_model
from bpnn_jax.io import read_xsf
from tests.test_gpu import _inputs, _float64
model = _float64(load_model("tio2"))
atoms = read_xsf(sys.argv[1])
out = jax.jit(lambda inp: model(inp, training=False))(_inputs(model, atoms))
print(json.dumps({"platform": jax.default_backend(), "energy": np.asarray(out["energy"]).tolist(),
                  "forces": np.asarray(out["forces"]).tolist()}))
"""


def _cpu_reference(path) -> dict:
    """Energy and forces of the float64 shipped model on the host CPU (a subprocess with JAX_PLATFORMS=cpu)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run([sys.executable, "-c", _CPU_SCRIPT, str(path)], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["platform"] == "cpu"
    return out


@pytest.mark.parametrize("name", ["structure1632.xsf", "structure7513.xsf"])  # 6 atoms / 2.36 Å cell; 95 atoms
def test_gpu_matches_cpu_and_finite_differences(model64, data_dir, name):
    atoms = read_xsf(data_dir / name)
    x = _inputs(model64, atoms)
    nat = len(atoms)
    out_gpu = jax.device_get(jax.jit(lambda inp: model64(inp, training=False))(x))
    out_cpu = _cpu_reference(data_dir / name)
    np.testing.assert_allclose(out_gpu["energy"], out_cpu["energy"], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(out_gpu["forces"], out_cpu["forces"], rtol=1e-9, atol=1e-9)

    forces = np.asarray(out_gpu["forces"][0, :nat])
    energy = jax.jit(lambda p: model64.structure_energies(p, x["cell"], x)[0])
    step = 1e-4
    rng = np.random.default_rng(0)
    for a in rng.choice(nat, size=min(nat, 4), replace=False):
        for c in range(3):
            p = np.array(x["positions"])
            p[0, a, c] += step
            e_plus = float(energy(p))
            p[0, a, c] -= 2 * step
            numeric = -(e_plus - float(energy(p))) / (2 * step)
            assert abs(numeric - forces[a, c]) <= 1e-6 * max(1.0, np.abs(forces).max()), (a, c)


def test_energy_force_training_steps_lower_the_loss(gpu, six_atom_files, tmp_path):
    from bpnn_jax.training import TrainConfig, train

    config = TrainConfig(members=1, hidden=(16, 16), ef_epochs=4, ef_warmup_epochs=1, ef_force_weight=1e-2,
                         ef_learning_rate=3e-3, ef_atoms_per_batch=64, patience=100)
    train(six_atom_files, tmp_path / "run", config, verbose=0)
    import csv

    with open(tmp_path / "run" / "ef_history.csv") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
