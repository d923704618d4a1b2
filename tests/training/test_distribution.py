"""Data-parallel training (``TrainConfig.data_parallel``, ``--data-parallel``).

JAX fixes its device list when it is first imported, so the two-device
check runs in a fresh Python process with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (two CPU devices);
this file is also that process's script.  It fits the same tiny model on
energies and forces from the same initial weights once on one device and
once under :func:`bpnn_jax.training.data_parallel_distribution`, and
compares weights, losses and metrics; it checks that each batch is split
over both devices inside ``fit`` and that the weights are replicated.
Compiling the force step (double backprop) twice dominates its ~35 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

#: float32 training: the two runs differ only in the order of sums (the
#: all-reduce of the two half-batch gradients), ~1e-7 relative per step.
RTOL, ATOL = 1e-5, 1e-6


def test_batch_sizes_round_up_to_the_device_count(six_atom_files):
    from bpnn_jax import training

    data = training.load_training_data(six_atom_files[:10], training.TrainConfig(), progress=False)
    hosts, elements = data["structures"], data["elements"]
    # 100 padded atoms / 8 per six-atom structure = 12 rows; on 5 devices rounded up to 15.
    for multiple, rows in [(1, 12), (2, 12), (5, 15)]:
        ds = training.GeometryDataset(hosts, elements, atoms_per_batch=100, batch_multiple=multiple)
        assert {b for _, b, _, _ in ds.plan} == {rows}
        assert ds[0][0]["positions"].shape[0] == rows


def test_cli_flag_sets_data_parallel(monkeypatch, tmp_path):
    from bpnn_jax import training
    from bpnn_jax.cli import main

    seen = []
    monkeypatch.setattr(training, "train", lambda paths, out, config, **kw: seen.append(config))
    assert main(["train", "x.xsf", "--out", str(tmp_path), "--quiet"]) == 0
    assert main(["train", "x.xsf", "--out", str(tmp_path), "--data-parallel", "--batch-size", "8"]) == 0
    assert [c.data_parallel for c in seen] == [False, True]


def test_data_parallel_training_matches_one_device(six_atom_files, tmp_path):
    # (LLVM optimisation off: compiles faster, and both runs use the same code.)
    flags = "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    files = [str(f) for f in six_atom_files[:8]]
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), *files], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    # Inside fit, each step's input was split over both devices.
    assert report["fit_input_devices"] == 2 and report["fit_input_split"], report
    # The weights moved far more than the tolerance, so agreement means something.
    assert report["weight_change"] > 1e3 * ATOL, report


def _tiny_model(elements, references, energy_shift):
    """A float32 BPNN with 2 symmetry functions per element (cheap to compile)."""
    import keras
    import numpy as np

    from bpnn_jax.descriptors import SymmetryFunctionSet
    from bpnn_jax.model import BPNN

    spec = SymmetryFunctionSet(tuple(elements), 6.5, ((0.1, 0.0),), ((0.03, 1.0, 1),))
    keras.utils.set_random_seed(0)
    model = BPNN(spec.to_config(), hidden=(8,), reference_energies=references, force_weight=0.1)
    S, F = len(elements), spec.n_functions
    model.set_statistics(np.full((S, F), 2.0), np.full((S, F), 3.0), np.zeros((S, F)), np.zeros((S, F)),
                         energy_shift, 0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    return model


def _worker(tmp: Path, files: list[str]) -> dict:
    import jax

    assert len(jax.devices()) == 2, jax.devices()
    from bpnn_jax import training  # before keras: importing bpnn_jax selects the JAX backend
    import keras
    import numpy as np

    from bpnn_jax.errors import BPNNInputError
    from bpnn_jax.model import BPNN

    config = training.TrainConfig(batch_size=4, data_parallel=True, val_fraction=0.25, test_fraction=0.0)
    data = training.load_training_data(files, config, progress=False)
    elements, refs = data["elements"], data["references"]
    comp = np.stack([np.bincount(h.species, minlength=len(elements)) for h in data["structures"]])
    shift = np.linalg.lstsq(comp, [h.energy for h in data["structures"]], rcond=None)[0]

    def dataset():
        return training.GeometryDataset(data["structures"], elements, batch_size=4)

    # One device.
    serial = _tiny_model(elements, refs, shift)
    initial = serial.get_weights()
    hist_s = serial.fit(dataset(), epochs=2, shuffle=False, verbose=0).history

    # Both devices; record how fit lays out the model's input while it traces its step.
    seen = []
    compute_loss = BPNN.compute_loss

    def recording_loss(self, x=None, *args, **kwargs):
        jax.debug.inspect_array_sharding(x["positions"], callback=seen.append)
        return compute_loss(self, x, *args, **kwargs)

    dist = training.data_parallel_distribution()
    BPNN.compute_loss = recording_loss
    try:
        with dist.scope():
            parallel = _tiny_model(elements, refs, shift)
            for a, b in zip(parallel.get_weights(), initial):
                np.testing.assert_array_equal(a, b)
            hist_p = parallel.fit(dataset(), epochs=2, shuffle=False, verbose=0).history
    finally:
        BPNN.compute_loss = compute_loss

    # Same weights, losses and metrics (energy and force RMSE).
    ws, wp = serial.get_weights(), parallel.get_weights()
    for a, b in zip(ws, wp):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    assert set(hist_s) == set(hist_p) >= {"loss", "energy_rmse_mev_atom", "force_rmse_ev_a"}
    for k in hist_s:
        np.testing.assert_allclose(hist_p[k], hist_s[k], rtol=RTOL, err_msg=k)
    # Weights replicated on both devices.
    for v in parallel.trainable_variables:
        assert len(v.value.sharding.device_set) == 2 and v.value.sharding.is_fully_replicated

    # A batch distributed as fit does it: half of the structures on each device.
    x, _ = dataset()[0]
    pos = keras.distribution.distribute_tensor(x["positions"], dist.get_data_layout(x["positions"].shape))
    shards = pos.addressable_shards
    assert len(shards) == 2 and len({s.device for s in shards}) == 2
    for s in shards:
        assert s.data.shape == (2, *x["positions"].shape[1:])
        np.testing.assert_array_equal(np.asarray(s.data), x["positions"][s.index])

    # train(): a batch size the devices cannot split is refused before anything runs.
    try:
        training.train(None, tmp / "odd", dataclasses.replace(config, batch_size=3), verbose=0, data=data)
    except BPNNInputError as exc:
        assert "multiple of the 2 devices" in str(exc), exc
    else:
        raise AssertionError("batch size 3 on 2 devices was accepted")
    assert keras.distribution.distribution() is None  # train() left its scope

    return {
        "devices": len(jax.devices()),
        "fit_input_devices": max(len(s.device_set) for s in seen),
        "fit_input_split": bool(seen) and not any(s.is_fully_replicated for s in seen),
        "weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(ws, initial)),
    }


if __name__ == "__main__":
    print(json.dumps(_worker(Path(sys.argv[1]), sys.argv[2:])))
