"""Record (or compare) every route from positions to energy, forces and stress of the shipped models, in float64.

Routes: the ASE calculator (committee mean forces, and per-member forces),
``BPNN.call`` on geometry inputs, ``predict_structures`` /
``predict_stress`` and the LAMMPS neighbour-matrix energy (per-atom energies
and their forces), for both shipped models on four structures of the bundled
sample (a 24-atom rutile-like cell, a thin 6-atom cell, a fully triclinic
6-atom cell, a 22-atom cell with 110° angles, and the triclinic cell
compressed to 85 %, whose short contacts switch on the pair baseline).  Written to check a
refactoring of these routes: record before, compare after::

    python benchmarks/energy_paths_record.py record /tmp/energy_paths_before.npz
    python benchmarks/energy_paths_record.py compare /tmp/energy_paths_before.npz

``compare`` prints the largest relative deviation per model and quantity
(energies relative to their magnitude, forces and stress relative to the
largest component of the array) and exits 1 when any exceeds 1e-12 (forces:
unless also within 1e-10 eV/Å absolute).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import jax
import numpy as np

from bpnn_jax.calculators.ase import BPNNCalculator
from bpnn_jax.calculators.lammps import lammps_layout, neighbor_matrix_energy
from bpnn_jax.descriptors.batch import collate, prepare_structures
from bpnn_jax.descriptors.neighbors import ATOM_BUCKETS, bucket_size
from bpnn_jax.io import read_xsf
from bpnn_jax.io.sample_data import sample_data_dir
from bpnn_jax.model.bpnn import load_model
from bpnn_jax.training.predict import predict_stress, predict_structures

MODELS = ("tio2", "tio2_v8")
#: rutile-like 24 atoms; thin (2.97 Å side); triclinic (106.6°, 112.7°, 90°); 22 atoms at 110°/110°.
STRUCTURES = ("structure0001.xsf", "structure1061.xsf", "structure6821.xsf", "structure5446.xsf")
#: And the triclinic cell compressed by this factor: Ti-O contacts ~1.6 Å, inside the pair baseline's reach.
COMPRESSED = ("structure6821.xsf", 0.85)
RTOL = 1e-12
FORCE_ATOL = 1e-10


def record() -> dict[str, np.ndarray]:
    jax.config.update("jax_enable_x64", True)
    atoms_list = [read_xsf(sample_data_dir() / name) for name in STRUCTURES]
    squeezed = read_xsf(sample_data_dir() / COMPRESSED[0])
    squeezed.set_cell(squeezed.cell.array * COMPRESSED[1], scale_atoms=True)
    atoms_list.append(squeezed)
    out: dict[str, np.ndarray] = {}
    for name in MODELS:
        model = load_model(name, dtype="float64")
        hosts = prepare_structures(atoms_list, model.elements, model.spec.cutoff)
        call = jax.jit(lambda x, model=model: model(x, training=False))
        for s, (atoms, h) in enumerate(zip(atoms_list, hosts)):
            p = f"{name}/{s}/"
            for member_forces in (False, True):
                a = atoms.copy()
                a.calc = BPNNCalculator(model, member_forces=member_forces, warn_extrapolation=False)
                q = p + f"ase_mf{int(member_forces)}/"
                out[q + "energy"] = np.float64(a.get_potential_energy())
                out[q + "energies"] = a.get_potential_energies()
                out[q + "forces"] = a.get_forces()
                out[q + "stress"] = a.get_stress()
                out[q + "energy_std"] = np.float64(a.calc.results["energy_std"])
                if member_forces:
                    out[q + "forces_std"] = a.calc.results["forces_std"]
            inputs = collate([h], 1, bucket_size(h.n_atoms, ATOM_BUCKETS), h.slots,
                             dtype=np.float64).inputs(model.elements)
            res = call(inputs)
            out[p + "call/energy"] = np.asarray(res["energy"][0], np.float64)
            out[p + "call/forces"] = np.asarray(res["forces"][0, :h.n_atoms], np.float64)
            out[p + "call/energy_members"] = np.asarray(res["energy_members"][:, 0], np.float64)
            out[p + "call/forces_members"] = np.asarray(res["forces_members"][:, 0, :h.n_atoms], np.float64)
            layout = lammps_layout(atoms, model.elements, model.spec.cutoff, max_atoms=2048, max_neighbors=256,
                                   rows=32)
            graph = SimpleNamespace(neighbors=jax.numpy.asarray(layout.neighbors),
                                    num_neighbors=jax.numpy.asarray(layout.num_neighbors))
            fn = neighbor_matrix_energy(model)
            species = jax.numpy.asarray(layout.species)

            def total(pos, fn=fn, species=species, graph=graph, nlocal=layout.nlocal):
                return jax.numpy.sum(fn(pos, species, graph)[:nlocal])

            pos = jax.numpy.asarray(layout.positions)
            e_atoms = np.asarray(fn(pos, species, graph), np.float64)[:layout.nlocal]
            out[p + "lammps/energies"] = e_atoms
            out[p + "lammps/forces_all"] = -np.asarray(jax.grad(total)(pos), np.float64)
        energies, forces, e_std, f_std = predict_structures(model, hosts, dtype=np.float64, uncertainty=True)
        out[f"{name}/predict/energy"] = energies
        out[f"{name}/predict/energy_std"] = e_std
        for s in range(len(hosts)):
            out[f"{name}/{s}/predict/forces"] = forces[s]
            out[f"{name}/{s}/predict/forces_std"] = f_std[s]
        out[f"{name}/predict/stress_gpa"] = predict_stress(model, hosts, dtype=np.float64)
    return out


def compare(before: dict, after: dict) -> bool:
    ok = True
    worst: dict[tuple[str, str], float] = {}
    missing = sorted(set(before) ^ set(after))
    if missing:
        print("keys differ:", missing)
        ok = False
    for key in sorted(set(before) & set(after)):
        a, b = np.asarray(before[key], np.float64), np.asarray(after[key], np.float64)
        scale = max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-300)
        dev = float(np.max(np.abs(a - b))) if a.size else 0.0
        rel = dev / scale
        parts = key.split("/")
        group = (parts[0], "/".join(p for p in parts[1:] if not p.isdigit()))
        worst[group] = max(worst.get(group, 0.0), rel)
        force_like = "forces" in key
        if rel > RTOL and not (force_like and dev <= FORCE_ATOL):
            print(f"FAIL {key}: max |diff| {dev:.3e}, relative {rel:.3e}")
            ok = False
    for (model, quantity), rel in sorted(worst.items()):
        print(f"{model:8s} {quantity:28s} max relative deviation {rel:.2e}")
    return ok


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("record", "compare"):
        print(__doc__)
        return 2
    values = record()
    if argv[1] == "record":
        np.savez(argv[2], **values)
        print(f"wrote {len(values)} arrays to {argv[2]}")
        return 0
    before = dict(np.load(argv[2]))
    return 0 if compare(before, values) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
