"""LAMMPS route: a BPNN as a lammps-jax bundle for ``pair_style jax/kk``.

`lammps-jax <https://pypi.org/project/lammps-jax/>`_ runs a JAX energy
function inside LAMMPS (KOKKOS) through ``jax.export`` and a PJRT plugin.
:func:`export_lammps` writes such a bundle for a model; :func:`verify_bundle`
runs the exported program in this process on structures laid out as LAMMPS
lays them out and compares it with :class:`~bpnn_jax.calculators.ase.
BPNNCalculator`.

The program's inputs are LAMMPS's (metal units: Å, eV, eV/Å):

* ``positions`` (A, 3): owned atoms first (rows 0 … nlocal-1), then ghost
  atoms (periodic images and atoms of other ranks, nlocal … nlocal+nghost-1),
  then padding; A = ``max_atoms``.
* ``species`` (A,): LAMMPS type − 1, so **type t is element t-1 of
  ``model.elements``** (for ``tio2``: type 1 = O, type 2 = Ti).
* the full neighbour list as a matrix ``neighbors`` (M, R), slot-major, one
  column per owned row, padding = A, and ``num_neighbors`` (R,);
  M = ``max_neighbors``, R = ``max_owned`` (or A).

Every owned atom gets its symmetry functions from the displacements to its
listed neighbours (ghosts carry their own positions, so no cell shifts are
needed; pairs beyond the cut-off add exactly zero), its atomic energy from
its element's network, plus its element's free-atom reference energy, so the
total is on the DFT scale like the calculator's.  Forces are −dE/dR of the
owned rows' energy with respect to every position, ghosts included (LAMMPS
sums ghost forces into their owners: newton on).

The LAMMPS list is not sorted by element, while the descriptor kernel wants
element blocks of static size.  Each neighbour row is therefore presented
once per element, masked to that element's neighbours (``len(elements)``
blocks of M slots): the kernel of :mod:`bpnn_jax.descriptors` is used
unchanged, exact against aenet, at ~S(S+1)/2 times the angular work of a
sorted list (S elements).

lammps-jax is optional and not a dependency: install it with
``pip install --no-deps lammps-jax==0.2.1`` (its metadata excludes jaxlib
0.10.2; resolving it would move jaxlib below jax, which makes JAX ~8×
slower).
"""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..descriptors.neighbors import neighbor_list
from ..errors import BPNNInputError
from ..model.bpnn import BPNN, load_model, with_dtype
from ..model.potential import site_energies

__all__ = [
    "LAMMPS_JAX_INSTALL",
    "LammpsExportError",
    "LammpsLayout",
    "neighbor_matrix_energy",
    "export_lammps",
    "lammps_layout",
    "compile_bundle",
    "read_bundle",
    "run_bundle",
    "verify_bundle",
]

#: How to install the optional dependency without moving jaxlib.
LAMMPS_JAX_INSTALL = 'pip install --no-deps "lammps-jax==0.2.1"'

#: Key of this package's metadata in the bundle.  lammps-jax's C++ loader
#: reads keys by first match in the file, so the metadata uses no key of its
#: contract (cutoff, precision, max_atoms, ...).
METADATA_KEY = "bpnn_jax"


class LammpsExportError(BPNNInputError):
    """A bundle that cannot be written, read or run, or a structure that does not fit it."""


def _export_module():
    try:
        from lammps_jax import export
    except ImportError:
        raise LammpsExportError(
            f"the LAMMPS route needs lammps-jax, which is not installed: {LAMMPS_JAX_INSTALL}"
        ) from None
    return export


def neighbor_matrix_energy(model: BPNN):
    """The per-atom energy function of ``model`` in lammps-jax's neighbour-matrix layout.

    Returns:
        ``energy(positions, species, graph) -> (A,)`` per-atom energies (eV,
        DFT scale: network energy plus the element's reference energy) of
        the rows of ``graph.neighbors`` (A rows past them are 0).  An atom
        with neighbours whose type is not one of the model's elements gets
        NaN, which LAMMPS reports, rather than a silent zero.  The model's
        weights are constants of the function (a bundle is the model).
    """
    S = len(model.elements)
    dtype = model.compute_dtype or "float32"
    refs = np.asarray([model.reference_energies.get(el, 0.0) for el in model.elements], dtype)

    def energy(positions, species, graph):
        A = positions.shape[0]
        nbr = graph.neighbors.T  # (R, M): row i lists its neighbours
        R, M = nbr.shape
        count = graph.num_neighbors
        valid = (jnp.arange(M)[None, :] < count[:, None]) & (nbr >= 0) & (nbr < A)
        j = jnp.where(valid, nbr, 0)
        disp = positions[j] - positions[:R, None, :]  # (R, M, 3), Å
        s_j = species[j]
        disp_blocks = jnp.concatenate([disp] * S, axis=1)  # one masked copy per element
        mask_blocks = jnp.concatenate([valid & (s_j == s) for s in range(S)], axis=1)
        s_i = species[:R]
        known = (s_i >= 0) & (s_i < S)
        s_safe = jnp.where(known, s_i, 0)
        # The model's own site energies (networks and pair baseline), as in every other route.
        e, _ = site_energies(model, disp_blocks[None], mask_blocks[None], (M,) * S, s_safe[None],
                             jnp.concatenate([s_j] * S, axis=1)[None], jnp.ones((1, R), bool))
        e = e[0] + jnp.asarray(refs)[s_safe]
        e = jnp.where(known | (count == 0), e, jnp.nan)
        return jnp.zeros((A,), e.dtype).at[:R].set(e)

    return energy


def _model_label(model_ref) -> str:
    if isinstance(model_ref, (str, os.PathLike)):
        text = str(model_ref)
        return text if not os.path.exists(text) else str(Path(text).resolve())
    return ""


def export_lammps(
    model,
    path,
    *,
    platform: str = "cpu",
    precision: str = "float64",
    max_atoms: int = 4096,
    max_neighbors: int = 192,
    max_owned: int | None = None,
) -> dict:
    """Write ``model`` as a lammps-jax bundle (JSON) for ``pair_style jax/kk``.

    Args:
        model: a :class:`~bpnn_jax.model.BPNN`, a path or a shipped name.
        path: the bundle to write (written atomically).
        platform: "cpu" or "cuda": the PJRT plugin LAMMPS will run it on.
        precision: "float64" or "float32" for the whole program
            (descriptors and networks).  float32 total energies of ~10⁵ eV
            resolve only ~0.01 eV; forces are fine either way.
        max_atoms: capacity of owned + ghost atoms per MPI rank.
        max_neighbors: capacity of one atom's neighbour list within the
            cut-off (LAMMPS filters pairs to the cut-off).
        max_owned: capacity of owned atoms per rank (rows of the neighbour
            matrix); None = ``max_atoms``.  Ghost rows cost as much as owned
            ones, so a value near the owned count saves work.

    Returns:
        The bundle dict (as written).

    Raises:
        LammpsExportError: lammps-jax missing or invalid capacities.
    """
    export = _export_module()
    if platform not in ("cpu", "cuda"):
        raise LammpsExportError(f"platform must be 'cpu' or 'cuda', got {platform!r}")
    if precision not in ("float32", "float64"):
        raise LammpsExportError(f"precision must be 'float32' or 'float64', got {precision!r}")
    for name, value in (("max_atoms", max_atoms), ("max_neighbors", max_neighbors)):
        if int(value) < 1:
            raise LammpsExportError(f"{name} must be a positive integer, got {value!r}")
    if max_owned is not None and not 0 < int(max_owned) <= int(max_atoms):
        raise LammpsExportError(f"max_owned must be in 1..max_atoms ({max_atoms}), got {max_owned!r}")
    label = _model_label(model)
    if not isinstance(model, BPNN):
        model = load_model(model)
    model = with_dtype(model, precision)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        bundle = export.export_model(
            energy_fn=neighbor_matrix_energy(model),
            path=tmp,
            max_atoms=int(max_atoms),
            max_neighbors=int(max_neighbors),
            max_owned=None if max_owned is None else int(max_owned),
            cutoff=float(model.spec.cutoff),
            unit_style="metal",
            precision=precision,
            n_species=len(model.elements),
            platform=platform,
        )
        bundle[METADATA_KEY] = {
            "model": label,
            "elements": list(model.elements),
            "lammps_types": {str(t + 1): el for t, el in enumerate(model.elements)},
            "members": int(model.members),
            "reference_energies_ev": dict(model.reference_energies),
            "descriptor_functions": int(model.spec.n_functions),
            "lammps_jax": _lammps_jax_version(),
        }
        tmp.write_text(json.dumps(bundle, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return bundle


def _lammps_jax_version() -> str:
    try:
        from importlib.metadata import version

        return version("lammps-jax")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


# ------------------------------------------------------------ verification
@dataclass(frozen=True)
class LammpsLayout:
    """One structure as LAMMPS hands it to the bundle (one MPI rank).

    Attributes:
        positions: (A, 3) owned atoms, then ghost images, then zeros, Å.
        species: (A,) int32 element indices (LAMMPS type − 1); 0 for padding.
        nlocal: owned atoms (the structure's atoms, in order).
        nghost: ghost atoms.
        neighbors: (M, R) int32 neighbour matrix, padding A.
        num_neighbors: (R,) int32.
        owner: (nlocal + nghost,) index of the owned atom each row is an
            image of (LAMMPS's reverse communication of ghost forces).
    """

    positions: np.ndarray
    species: np.ndarray
    nlocal: int
    nghost: int
    neighbors: np.ndarray
    num_neighbors: np.ndarray
    owner: np.ndarray


def lammps_layout(atoms, elements: Sequence[str], cutoff: float, *, max_atoms: int, max_neighbors: int,
                  rows: int, skin: float = 1.0, dtype="float64", seed: int = 0, name: str | None = None) -> LammpsLayout:
    """Lay out ``atoms`` as LAMMPS would: owned atoms, ghost images, full neighbour matrix.

    Ghosts are every periodic image within ``cutoff + skin`` of an owned atom
    (LAMMPS's ghost shell is at least that); each row lists neighbours up to
    ``cutoff`` in a shuffled order (LAMMPS's order is arbitrary; the pair
    style filters its skin list to the cut-off).

    Raises:
        LammpsExportError: the structure does not fit the capacities, or has
            an element the model does not know.
    """
    name = name or str(atoms.info.get("file", atoms.get_chemical_formula()))
    lookup = {el: k for k, el in enumerate(elements)}
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(lookup))
    if unknown:
        raise LammpsExportError(f"{name}: element(s) {', '.join(unknown)} not in the bundle's {', '.join(elements)}")
    species = np.array([lookup[s] for s in symbols], np.int32)
    pos = np.asarray(atoms.positions, np.float64)
    cell = np.asarray(atoms.cell.array, np.float64)
    n = len(atoms)
    nl = neighbor_list(pos, cell, atoms.pbc, float(cutoff) + float(skin), name=name)
    shifts = np.asarray(nl.shifts, np.int64)
    image = np.any(shifts != 0, axis=1)
    # One ghost per distinct (atom, shift) image.
    keys = np.concatenate([nl.neighbors[image, None].astype(np.int64), shifts[image]], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    nghost = len(uniq)
    if n + nghost > max_atoms:
        raise LammpsExportError(f"{name}: {n} atoms + {nghost} ghosts exceed the bundle's max_atoms = {max_atoms}")
    if n > rows:
        raise LammpsExportError(f"{name}: {n} owned atoms exceed the bundle's {rows} neighbour-matrix rows (max_owned)")
    ghost_pos = pos[uniq[:, 0]] + uniq[:, 1:].astype(np.float64) @ cell
    positions = np.zeros((max_atoms, 3), dtype)
    positions[:n] = pos
    positions[n:n + nghost] = ghost_pos
    all_species = np.zeros(max_atoms, np.int32)
    all_species[:n] = species
    all_species[n:n + nghost] = species[uniq[:, 0]]
    target = np.asarray(nl.neighbors, np.int64).copy()
    target[image] = n + np.asarray(inverse).reshape(-1)
    # The full list within the cut-off, in a shuffled order per row.
    d = np.linalg.norm(pos[nl.neighbors] + shifts @ cell - pos[nl.centers], axis=1)
    keep = d < float(cutoff)
    centers, target = np.asarray(nl.centers)[keep], target[keep]
    counts = np.bincount(centers, minlength=n)
    if counts.size and counts.max() > max_neighbors:
        i = int(np.argmax(counts))
        raise LammpsExportError(f"{name}: atom {i} has {counts[i]} neighbours within {cutoff} Å, more than the "
                                f"bundle's max_neighbors = {max_neighbors}")
    rng = np.random.default_rng(seed)
    neighbors = np.full((max_neighbors, rows), max_atoms, np.int32)
    order = np.argsort(centers, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)])
    for i in range(n):  # host-side layout of a test structure, not a hot path
        row = target[order[start[i]:start[i + 1]]]
        neighbors[:len(row), i] = rng.permutation(row)
    num = np.zeros(rows, np.int32)
    num[:n] = counts
    owner = np.concatenate([np.arange(n), uniq[:, 0]])
    return LammpsLayout(positions, all_species, n, nghost, neighbors, num, owner)


def compile_bundle(bundle: dict, program: str = "energy_and_forces"):
    """``(executable, device)``: the bundle's program compiled for this process's backend of its platform."""
    from jax._src import xla_bridge
    from jaxlib import xla_client

    platform = bundle["export_info"]["platform"]
    try:
        backend = xla_bridge.get_backend("gpu" if platform == "cuda" else "cpu")
    except RuntimeError:
        raise LammpsExportError(f"the bundle was exported for {platform}, which this machine lacks; "
                                f"export it with --platform cpu to verify it here") from None
    blob = base64.b64decode(bundle["programs"][f"{program}_mlir_b64"])
    devices = xla_client.DeviceList(tuple(backend.devices()[:1]))
    # The bundle's own options are "portable" (no device assignment), which
    # PJRT can only run through LAMMPS's loader; in process, plain options.
    return backend.compile_and_load(blob, devices, xla_client.CompileOptions()), backend.devices()[0]


def run_bundle(bundle: dict, layout: LammpsLayout, executable=None) -> tuple[float, np.ndarray]:
    """Run a bundle's energy-and-forces program on one laid-out structure.

    Returns:
        (energy in eV, (nlocal, 3) forces in eV/Å with ghost forces summed
        into their owners, as LAMMPS's reverse communication does).
    """
    exe, device = executable or compile_bundle(bundle)
    dtype = np.float64 if bundle["contract"]["precision"] == "float64" else np.float32
    args = [layout.positions.astype(dtype), layout.species, np.int32(layout.nlocal), np.int32(layout.nghost),
            layout.neighbors, layout.num_neighbors]
    out = exe.execute_sharded([jax.device_put(a, device) for a in args]).disassemble_into_single_device_arrays()
    energy, forces = (np.asarray(o[0], np.float64) for o in out)
    n_rows = layout.nlocal + layout.nghost
    folded = np.zeros((layout.nlocal, 3))
    np.add.at(folded, layout.owner, forces[:n_rows])
    return float(energy), folded


def read_bundle(path) -> dict:
    """A bundle written by :func:`export_lammps` (LammpsExportError if it is not one)."""
    path = Path(path)
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LammpsExportError(f"{path}: not a readable lammps-jax bundle ({exc})") from None
    if not isinstance(bundle, dict) or "contract" not in bundle or METADATA_KEY not in bundle:
        raise LammpsExportError(f"{path}: not a bundle written by 'bpnn_jax export-lammps'")
    return bundle


def verify_bundle(path, structures, model=None, *, names: Sequence[str] | None = None, skin: float = 1.0,
                  bundle: dict | None = None) -> dict:
    """Exported program against the calculator on each structure.

    Args:
        path: the bundle.
        structures: ASE Atoms.
        model: the model to compare with (BPNN, path or name); None uses the
            one recorded in the bundle.
        names: labels of the structures (default: ``atoms.info["file"]``).
        skin: ghost-shell skin of the layout, Å.
        bundle: the contents of ``path`` when the caller has read them
            already (:func:`read_bundle`).

    Returns:
        dict with ``max_abs_energy_error_ev``, ``max_rel_energy_error``,
        ``max_abs_force_error_ev_a`` and one row per structure in
        ``structures``.
    """
    from .ase import BPNNCalculator

    bundle = read_bundle(path) if bundle is None else bundle
    meta, contract = bundle[METADATA_KEY], bundle["contract"]
    ref = model if model is not None else meta["model"]
    if not ref:
        raise LammpsExportError(f"{path}: the bundle records no model path; give the model to compare with")
    calc = BPNNCalculator(ref, dtype=contract["precision"], warn_extrapolation=False)
    if tuple(calc.model.elements) != tuple(meta["elements"]):
        raise LammpsExportError(f"{path}: bundle elements {meta['elements']} differ from the model's {list(calc.model.elements)}")
    executable = compile_bundle(bundle)
    rows = int(contract.get("max_owned") or contract["max_atoms"])
    out_rows = []
    for k, atoms in enumerate(structures):
        name = names[k] if names is not None else str(atoms.info.get("file", f"structure {k}"))
        layout = lammps_layout(atoms, meta["elements"], contract["cutoff"], max_atoms=contract["max_atoms"],
                               max_neighbors=contract["max_neighbors"], rows=rows, skin=skin,
                               dtype=contract["precision"], seed=k, name=name)
        energy, forces = run_bundle(bundle, layout, executable)
        a = atoms.copy()
        a.calc = calc
        e_ref = float(a.get_potential_energy())
        f_ref = np.asarray(a.get_forces(), np.float64)
        if not (math.isfinite(energy) and np.all(np.isfinite(forces))):
            raise LammpsExportError(f"{name}: the exported program gave a non-finite energy or force")
        out_rows.append({
            "structure": name, "n_atoms": len(atoms), "n_ghosts": layout.nghost,
            "energy_ev": energy, "calculator_energy_ev": e_ref,
            "abs_energy_error_ev": abs(energy - e_ref),
            "rel_energy_error": abs(energy - e_ref) / max(abs(e_ref), 1e-300),
            "max_abs_force_error_ev_a": float(np.max(np.abs(forces - f_ref))) if len(atoms) else 0.0,
        })
    return {
        "bundle": str(path), "model": str(ref if isinstance(ref, str) else meta["model"]),
        "precision": contract["precision"], "platform": bundle["export_info"]["platform"],
        "max_abs_energy_error_ev": max((r["abs_energy_error_ev"] for r in out_rows), default=0.0),
        "max_rel_energy_error": max((r["rel_energy_error"] for r in out_rows), default=0.0),
        "max_abs_force_error_ev_a": max((r["max_abs_force_error_ev_a"] for r in out_rows), default=0.0),
        "structures": out_rows,
    }
