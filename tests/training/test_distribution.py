"""Data-parallel committee training (``CommitteeConfig.data_parallel``, ``train --data-parallel``).

* On two (forced host) devices, a few epochs of a small float64 committee
  give the weights and losses of the one-device run (1e-10), with batches
  of odd sizes padded to the device count, and the step's batch is really
  split across both devices (its sharding seen inside the compiled step);
  a data-parallel run's saved state resumes on one device as the one-device
  run, and its weights go on to the one-device L-BFGS polish; with dropout
  and unpadded batches the two runs draw the same masks;
* asking for it with one device stops with a message that says how to get
  more (no traceback); ``--data-parallel`` and ``data_parallel: true`` in a
  config file are options again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import bpnn_jax  # noqa: F401  (selects the JAX backend)
from bpnn_jax.errors import BPNNInputError
from bpnn_jax.training import TrainConfig
from bpnn_jax.training import jacobian as jt

#: Runs in a fresh interpreter: the device count is fixed when JAX starts.
_WORKER = r"""
import json
import shutil
import tempfile
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import bpnn_jax
from ase.build import bulk
from ase.calculators.emt import EMT
from bpnn_jax.descriptors import SymmetryFunctionSet
from bpnn_jax.descriptors.batch import prepare_structures
from bpnn_jax.descriptors.featurize import descriptor_jacobians
from bpnn_jax.training import compute_statistics, featurize_host
from bpnn_jax.training import jacobian as jt

def copper(rep, seed):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(rep)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms

# 8 cells of 4 atoms (padded to 8): batches of 3, 3 and 2, the first two padded to the 2 devices.
atoms = [copper((1, 1, 1), s) for s in range(8)]
spec = SymmetryFunctionSet.imbalzano(("Cu",), cutoff=4.0)
hosts = prepare_structures(atoms, spec.elements, spec.cutoff, energy_offsets={"Cu": 0.0})
sf = featurize_host(hosts, spec, dtype=np.float64)
stats = compute_statistics(sf, [h.species for h in hosts], [h.energy for h in hosts], 1)
jac = descriptor_jacobians(hosts, spec, dtype=np.float64)
groups = jt.group_by_size(sf, [h.species for h in hosts], [h.energy for h in hosts], [h.forces for h in hosts],
                          tuple(jac), dtype=np.float64)
cfg = jt.CommitteeConfig(members=2, hidden=(6,), epochs=3, warmup_epochs=1, atoms_per_batch=24, bootstrap=True,
                         learning_rate=1e-2, force_weight=(1e-2, 3e-2), ema_decay=0.5)

seen = []  # the devices holding the step's gathered batch, as the partitioner placed it
losses = jt.member_losses

def spying(params, stats, g, *args, **kwargs):
    jax.debug.inspect_array_sharding(g["sf"], callback=lambda s: seen.append(
        (len(s.device_set), str(getattr(s, "spec", "")))))
    return losses(params, stats, g, *args, **kwargs)

one = jt.fit_committee(groups, groups, stats, cfg, verbose=0, dtype="float64")
jt.member_losses = spying
run_dir = tempfile.mkdtemp()
branch = run_dir + "-epoch1"

def keep_epoch_1(epoch, rec):  # epoch 2's callback comes before its state is saved: the file holds epoch 1
    if epoch == 2:
        shutil.copytree(run_dir, branch)

two = jt.fit_committee(groups, groups, stats, jt.dataclasses.replace(cfg, data_parallel=True), verbose=0,
                       dtype="float64", run_dir=run_dir, checkpoint_seconds=0.0, on_epoch=keep_epoch_1)
jt.member_losses = losses
# Epoch 1 on two devices, epochs 2-3 resumed on one.
resumed = jt.fit_committee(groups, groups, stats, cfg, run_dir=branch, resume=True, verbose=0, dtype="float64",
                           checkpoint_seconds=0.0)
# Dropout with batches of 2 (nothing padded): the masks do not depend on how the batch is split.
drop = jt.dataclasses.replace(cfg, atoms_per_batch=16, dropout=0.2, epochs=2)
drop_one = jt.fit_committee(groups, groups, stats, drop, verbose=0, dtype="float64")
drop_two = jt.fit_committee(groups, groups, stats, jt.dataclasses.replace(drop, data_parallel=True), verbose=0,
                            dtype="float64")
polished = jt.polish_lbfgs(two["params"], groups, groups, stats, cfg, steps=2, verbose=0, dtype="float64")
shutil.rmtree(run_dir)
shutil.rmtree(branch)

def rel(x, y):
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / (np.abs(np.asarray(a)) + 1e-12)))
               for a, b in zip(jax.tree_util.tree_leaves(x["params"]), jax.tree_util.tree_leaves(y["params"])))

print(json.dumps({
    "devices": jax.device_count(), "param_rel": rel(one, two), "resumed_rel": rel(one, resumed),
    "dropout_rel": rel(drop_one, drop_two),
    "polished_finite": bool(all(np.all(np.isfinite(np.asarray(x)))
                                for x in jax.tree_util.tree_leaves(polished["params"]))),
    "loss_one": [r["train_loss"] for r in one["history"]], "loss_two": [r["train_loss"] for r in two["history"]],
    "val_one": [r["val_force_rmse_ev_a"] for r in one["history"]],
    "val_two": [r["val_force_rmse_ev_a"] for r in two["history"]],
    "moved": float(np.max(np.abs(np.asarray(one["params"]["W"][0]) - np.asarray(jax.tree_util.tree_leaves(
        jt.init_params(jax.random.PRNGKey(cfg.seed), 2, 1, sf[0].shape[1], cfg.hidden, "float64"))[0])))),
    "seen": seen, "returned_devices": len(jax.tree_util.tree_leaves(two["params"])[0].devices())}))
"""


def test_two_devices_train_as_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "JAX_ENABLE_X64": "1"}
    run = subprocess.run([sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    assert out["moved"] > 1e-3  # the runs trained
    assert out["param_rel"] < 1e-10
    assert out["loss_two"] == pytest.approx(out["loss_one"], rel=1e-10)
    assert out["val_two"] == pytest.approx(out["val_one"], rel=1e-10)
    # The compiled step's batch lies on both devices, split along the structures.
    assert out["seen"] and all(n == 2 and "data" in spec for n, spec in out["seen"]), out["seen"]
    assert out["returned_devices"] == 1  # ready for the one-device polish and export
    assert out["polished_finite"]
    assert out["dropout_rel"] < 1e-10  # dropout: the same masks on 2 devices
    assert out["resumed_rel"] < 1e-10  # a data-parallel run's state resumes on one device as if it had been there


def test_data_parallel_on_one_device_says_how_to_get_more():
    import jax

    if jax.local_device_count() > 1:
        pytest.skip("this process sees several devices")
    assert jt.data_mesh(False) is None
    with pytest.raises(BPNNInputError, match="xla_force_host_platform_device_count"):
        jt.data_mesh(True)


def test_data_parallel_is_an_option_again(tmp_path, six_atom_files, capsys):
    """``--data-parallel`` reaches the trainer's check (here: one device, a message, no traceback), and a config
    file's ``data_parallel: true`` is read, not dropped."""
    import jax

    from bpnn_jax.cli import main
    from bpnn_jax.cli.train import read_config

    assert TrainConfig(data_parallel=True).committee_config().data_parallel
    assert TrainConfig.from_json(TrainConfig(data_parallel=True).to_json()).data_parallel
    path = tmp_path / "c.yaml"
    path.write_text("data_parallel: true\nmembers: 2\n")
    assert read_config(path) == {"data_parallel": True, "members": 2}
    if jax.local_device_count() > 1:
        return
    code = main(["train", *map(str, six_atom_files), "--out", str(tmp_path / "r"), "--data-parallel"])
    err = capsys.readouterr().err
    assert code == 2 and "xla_force_host_platform_device_count" in err and "Traceback" not in err
