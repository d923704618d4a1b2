"""The one energy function of a BPNN: geometry in, energy, forces and strain derivative out.

Every route from positions to energies, forces and stress goes through
:func:`evaluate_potential` (or, for the neighbour-matrix layout of LAMMPS, through
the same :func:`site_energies`): ``BPNN.call`` on geometry inputs, the ASE
calculator, :func:`bpnn_jax.training.predict_structures` /
:func:`~bpnn_jax.training.predict.predict_stress` and the lammps-jax program.

Formulation.  The structure is deformed by a homogeneous symmetric strain ε,
positions and cell (row vectors) alike,

    R(ε) = R (I + sym(ε)),    C(ε) = C (I + sym(ε)),    sym(ε) = (ε + εᵀ)/2,

and the energy E(R(ε), C(ε)) is differentiated once, at ε = 0, with respect
to the positions and the strain:

    forces        F = -dE/dR              (B, N, 3)  eV/Å
    de_dstrain    W = dE/dε               (B, 3, 3)  eV (symmetric)

so forces and stress come from one backward pass.  The stress in ASE's
convention is σ = W / V (eV/Å³, V the cell volume; tensile positive).
The deformation is written as R + R·sym(ε) with an elementwise product and a
sum (not a matrix product), so at ε = 0 the positions the descriptors see
are exactly the input positions, whatever precision a backend gives its
matrix products.

Committees (``model.members`` = K > 1): the energies are the members' mean,
``energy_members`` (K, B) holds each member's, and with ``member_forces``
each member's forces take one backward pass (:func:`member_backward`);
without, the forces and strain derivative of the mean energy take one pass.

Energies are relative to the free-atom references (the model's targets, see
:func:`bpnn_jax.model.bpnn.total_energy`), in eV.
"""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import keras

from ..descriptors.geometry import displacements
from ..descriptors.programs import persistent_jit
from ..descriptors.symmetry import atoms_descriptors
from ..errors import ModelError

__all__ = [
    "descriptors_from_displacements",
    "evaluate_potential",
    "member_backward",
    "neighbor_geometry",
    "potential_function",
    "site_energies",
    "slot_layout",
    "strain_deformation",
]


def member_backward(vjp, cotangents):
    """``vjp`` applied to each of a committee's cotangents (a leading member axis), one after another.

    ``jax.lax.map``, not ``jax.vmap``: on XLA's CPU backend (jaxlib 0.10.2)
    the descriptors' backward pass vmapped over the members' cotangents gave
    wrong float32 values in the last lanes (up to 0.7 eV/Å in the shipped
    committee's member forces; float64 and the unbatched pass were right).
    The cause is XLA's YNNPACK reduce fusion of the batched pass (a 4-lane
    VJP of x/|x| shows it: ``experiments/xla_vmap_vjp_bug.py``); turning
    that fusion off would slow the float32 kernels 16x, so the passes are
    mapped instead, see ``tests/model/test_bpnn.py``.  A map costs the same passes.
    """
    return jax.lax.map(vjp, cotangents)


def strain_deformation(positions, cell, strain):
    """Positions and cell under the homogeneous strain ``sym(strain)``.

    Args:
        positions: (B, N, 3) Å.
        cell: (B, 3, 3) lattice vectors as rows, Å.
        strain: (B, 3, 3) dimensionless; only its symmetric part acts.

    Returns:
        ``(R + R·sym(ε), C + C·sym(ε))``: (B, N, 3) and (B, 3, 3) Å; exactly
        the inputs at ε = 0 (elementwise products, no matrix product).
    """
    sym = 0.5 * (strain + jnp.swapaxes(strain, -1, -2))
    pos = positions + jnp.sum(positions[..., :, None] * sym[:, None, :, :], axis=-2)
    cel = cell + jnp.sum(cell[..., :, None] * sym[:, None, :, :], axis=-2)
    return pos, cel


def slot_layout(model, inputs) -> tuple[int, ...]:
    """Neighbour slots per element (the static shapes of the ``neighbor_mask_<element>`` inputs).

    Raises:
        ModelError: an element's mask is missing from ``inputs``.
    """
    try:
        return tuple(int(inputs[f"neighbor_mask_{el}"].shape[-1]) for el in model.elements)
    except KeyError as exc:
        raise ModelError(
            f"model inputs lack {exc.args[0]!r}; build inputs with Batch.inputs() for elements {model.elements}"
        ) from None


def neighbor_geometry(model, positions, cell, inputs):
    """The neighbour slots' geometry of a batch.

    Args:
        model: the BPNN (its elements).
        positions: (B, N, 3) Å.
        cell: (B, 3, 3) Å, rows.
        inputs: geometry inputs (``neighbors`` (B, N, M), ``shifts``
            (B, N, M, 3), ``species`` (B, N), ``neighbor_mask_<element>``).

    Returns:
        ``(disp, nmask, slots, species_j)``: displacements (B, N, M, 3) Å,
        real-neighbour mask (B, N, M) bool, the slots per element and the
        neighbours' species (B, N, M) int.
    """
    slots = slot_layout(model, inputs)
    nmask = jnp.concatenate([inputs[f"neighbor_mask_{el}"] for el in model.elements], axis=-1)
    neighbors = inputs["neighbors"]
    disp = jax.vmap(displacements)(positions, cell, neighbors, inputs["shifts"])
    species = inputs["species"]
    species_j = jnp.take_along_axis(species[:, :, None], neighbors.reshape(species.shape[0], -1, 1),
                                    axis=1).reshape(neighbors.shape)
    return disp, nmask, slots, species_j


def descriptors_from_displacements(model, disp, nmask, slots):
    """Symmetry functions (B, N, F) from slot displacements (B, N, M, 3) Å and their mask (B, N, M)."""
    B, N, M = nmask.shape
    g = atoms_descriptors(disp.reshape(B * N, M, 3), nmask.reshape(B * N, M), model.spec, slots, model.chunk_size)
    return g.reshape(B, N, -1)


def site_energies(model, disp, nmask, slots, species, species_j, atom_mask, *, members=False):
    """Atomic energies (eV, relative to the references) from the neighbour slots' geometry.

    The networks on the atoms' symmetry functions, plus the pair baseline
    (``model.repulsion``, the same for every member) when there is one.

    Args:
        model: the BPNN.
        disp: (B, N, M, 3) displacements r_j - r_i of the slots, Å.
        nmask: (B, N, M) bool, real neighbours.
        slots: slots per element (element-sorted blocks of the M axis).
        species: (B, N) int centre species.
        species_j: (B, N, M) int neighbour species (any value where masked).
        atom_mask: (B, N) bool, real atoms (padding gets 0 eV).
        members: for a committee, each member's energies (K, B, N) instead
            of their mean (B, N).  A single network gives (B, N) either way.

    Returns:
        ``(energies, sf)``: (B, N) or (K, B, N) eV, and the symmetry
        functions (B, N, F) (unstandardised).
    """
    sf = descriptors_from_displacements(model, disp, nmask, slots)
    per_member = members and model.members > 1
    atomic = model.member_atomic_energies if per_member else model.atomic_energies
    e = atomic(sf, species, atom_mask)
    if model.repulsion is not None:
        rep = jnp.where(atom_mask, model.repulsion.atomic_energies(disp, nmask, species, species_j), 0.0)
        e = e + (rep[None] if per_member else rep)
    return e, sf


def evaluate_potential(model, inputs, values=None, *, forces=True, stress=False, member_forces=False) -> dict:
    """Energy, forces and strain derivative of a batch of structures: the one energy function.

    Args:
        model: a :class:`~bpnn_jax.model.bpnn.BPNN` (its configuration and,
            unless ``values`` is given, its variables in the current Keras
            scope; inside ``fit`` or ``stateless_call`` those are Keras's).
        inputs: geometry inputs (:meth:`bpnn_jax.descriptors.batch.Batch.
            inputs`): ``positions`` (B, N, 3) Å, ``cell`` (B, 3, 3) Å (rows),
            ``species`` (B, N) int, ``atom_mask`` (B, N) bool, ``neighbors``
            (B, N, M) int, ``shifts`` (B, N, M, 3) and one
            ``neighbor_mask_<element>`` per element.  Positions and cell are
            cast to the model's compute dtype.
        values: values of ``model.variables``, in that order (a jitted
            caller passes them as arguments, see :func:`potential_function`),
            or None to use the variables as they are.
        forces: compute ``forces``.
        stress: compute ``de_dstrain``.
        member_forces: for a committee with ``forces``: also each member's
            forces (one backward pass per member); ignored otherwise.

    Returns:
        A dict of arrays in the model's compute dtype:

        * ``energy`` (B,) eV, relative to the free-atom references;
        * ``atomic_energies`` (B, N) eV (0 for padding), summing to ``energy``;
        * ``descriptors`` (B, N, F) symmetry functions (unstandardised);
        * ``forces`` (B, N, 3) eV/Å, -dE/dR (with ``forces``);
        * ``de_dstrain`` (B, 3, 3) eV, dE/dε at ε = 0 (with ``stress``;
          stress σ = de_dstrain / V in eV/Å³, ASE's sign);
        * committees only: ``energy_members`` (K, B) eV, and with
          ``member_forces`` ``forces_members`` (K, B, N, 3) eV/Å, whose mean
          over members is ``forces``.
    """
    if values is None:
        return _potential(model, inputs, forces, stress, member_forces)
    with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
        return _potential(model, inputs, forces, stress, member_forces)


def _potential(model, inputs, forces, stress, member_forces) -> dict:
    dtype = model.compute_dtype or "float32"
    positions = jnp.asarray(inputs["positions"], dtype)
    cell = jnp.asarray(inputs["cell"], dtype)
    committee = model.members > 1
    per_member = committee and member_forces and forces

    def energies(pos, strain):
        """Atomic energies ((K, B, N) for a committee, else (B, N)) and SFs of the strained structure."""
        if strain is not None:
            pos, cel = strain_deformation(pos, cell, strain)
        else:
            cel = cell
        disp, nmask, slots, species_j = neighbor_geometry(model, pos, cel, inputs)
        return site_energies(model, disp, nmask, slots, inputs["species"], species_j, inputs["atom_mask"],
                             members=True)

    def outputs(e, sf) -> dict:
        totals = jnp.sum(e, axis=-1)
        if not committee:
            return {"energy": totals, "atomic_energies": e, "descriptors": sf}
        return {"energy": jnp.mean(totals, axis=0), "atomic_energies": jnp.mean(e, axis=0), "descriptors": sf,
                "energy_members": totals}

    strain = jnp.zeros_like(cell) if stress else None
    if not (forces or stress):
        return outputs(*energies(positions, None))

    if per_member:
        # Forces (and strain derivatives) of every member: the forward pass
        # shared, one backward pass per member (one-hot cotangents).
        def member_totals(pos, strain_=None):
            e, sf = energies(pos, strain_)
            return jnp.sum(e, axis=-1), (e, sf)  # (K, B)

        primals = (positions, strain) if stress else (positions,)
        totals, vjp, (e, sf) = jax.vjp(member_totals, *primals, has_aux=True)
        onehot = jnp.eye(model.members, dtype=totals.dtype)[:, :, None] * jnp.ones_like(totals)[None]
        grads = member_backward(vjp, onehot)
        out = outputs(e, sf)
        out["forces"] = -jnp.mean(grads[0], axis=0)
        out["forces_members"] = -grads[0]
        if stress:
            out["de_dstrain"] = jnp.mean(grads[1], axis=0)
        return out

    def objective(pos, strain_):
        e, sf = energies(pos, strain_)
        totals = jnp.sum(e, axis=-1)
        return jnp.sum(jnp.mean(totals, axis=0) if committee else totals), (e, sf)

    argnums = tuple(i for i, on in ((0, forces), (1, stress)) if on)
    grads, (e, sf) = jax.grad(objective, argnums=argnums, has_aux=True)(positions, strain)
    out = outputs(e, sf)
    grads = dict(zip(argnums, grads))
    if forces:
        out["forces"] = -grads[0]
    if stress:
        out["de_dstrain"] = grads[1]
    return out


def _program_config(model, variables, flags) -> str:
    """What a trace of the potential bakes in besides its inputs, as a string (part of its programs' key).

    The model's class and configuration (descriptor set, networks,
    repulsion, dtype), its variables' order and the flags; the weights are
    arguments of the program, not part of it.
    """
    import json

    return json.dumps({"class": type(model).__qualname__, "config": model.get_config(),
                       "variables": [v.path for v in variables], "flags": list(flags)},
                      sort_keys=True, default=repr)


#: model -> {(forces, stress, member_forces): (jitted function, variables)}.
_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def potential_function(model, *, forces=True, stress=False, member_forces=False):
    """The jitted :func:`evaluate_potential` of ``model``, cached per model and flags.

    Args:
        model: the BPNN.
        forces, stress, member_forces: as for :func:`evaluate_potential`
            (``member_forces`` counts only for a committee with ``forces``).

    Returns:
        ``(f, variables)``: ``f(values, inputs) -> dict`` (the outputs of
        :func:`evaluate_potential`) with ``values`` the current values of
        ``variables`` (``model.variables``, in that order).  The values are
        arguments, not constants of the trace, so one compiled program per
        input shape serves a model whose weights change.  The cache holds
        no strong reference to the model.  A
        :func:`~bpnn_jax.descriptors.programs.persistent_jit`: a later
        process (``evaluate``, ``predict``, the ASE calculator) loads the
        traced programs of the same model configuration from disk instead
        of tracing them again.
    """
    member_forces = bool(member_forces) and bool(forces) and model.members > 1
    key = (bool(forces), bool(stress), member_forces)
    try:
        return _FUNCTIONS[model][key]
    except (KeyError, TypeError):
        pass
    variables = list(model.variables)
    model_ref = weakref.ref(model)

    def fn(values, inputs):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return _potential(model_ref(), inputs, *key)

    entry = (persistent_jit(fn, "evaluate_potential", _program_config(model, variables, key)), variables)
    try:
        _FUNCTIONS.setdefault(model, {})[key] = entry
    except TypeError:  # not weak-referenceable: no sharing, still correct
        pass
    return entry
