"""n2p2 export (``export-n2p2``): file formats, refusals, the pair-baseline table, and agreement with n2p2.

The fast tests read the written files back and evaluate them independently
(a NumPy forward pass that follows n2p2's file layout) without n2p2.  The
``lammps``-marked tests (``pytest -m lammps``, not in the default run) run
n2p2's ``nnp-predict`` on exported models and compare energies and forces
with bpnn_jax in float64; they need the build of
``bash benchmarks/lammps/build.sh`` (found in ``~/.cache/bpnn_jax_tools``,
``$BPNN_TOOLS_CACHE`` or at ``$BPNN_N2P2_BIN``) and fail without it.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import bpnn_jax  # noqa: F401  (sets the Keras backend before keras is imported)
from bpnn_jax.calculators.n2p2 import (
    export_n2p2,
    format_members,
    repulsion_table,
    write_n2p2_data,
)
from bpnn_jax.cli import main
from bpnn_jax.descriptors import ChebyshevBasis, SymmetryFunctionSet
from bpnn_jax.errors import BPNNInputError
from bpnn_jax.io import REFERENCE_ENERGIES_TIO2, read_xsf
from bpnn_jax.model import BPNN
from bpnn_jax.model.repulsion import PairRepulsion

REPO_ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------- file readers


def _read_input_nn(path: Path) -> dict:
    """Keywords of an input.nn: elements, atom_energy, nodes, activations, symmetry functions per centre."""
    out = {"sf": {}, "atom_energy": {}}
    for raw in path.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "elements":
            out["elements"] = args
        elif key == "number_of_elements":
            out["n_elements"] = int(args[0])
        elif key == "atom_energy":
            out["atom_energy"][args[0]] = float(args[1])
        elif key == "global_nodes_short":
            out["nodes"] = [int(a) for a in args]
        elif key == "global_activation_short":
            out["activations"] = args
        elif key == "cutoff_type":
            out["cutoff_type"] = args
        elif key == "symfunction_short":
            out["sf"].setdefault(args[0], []).append(args[1:])
        else:
            out[key] = args
    return out


def _data_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _column_of(spec, words) -> int:
    """The model column of one parsed symfunction_short line (its words after the centre element)."""
    kind = int(words[0])
    for k, col in enumerate(spec.columns()):
        if kind == 2 and col["kind"] == "G2" and col["neighbors"] == words[1] and col["eta"] == float(words[2]) \
                and col["rs"] == float(words[3]) and spec.cutoff == float(words[4]):
            return k
        if kind == 3 and col["kind"] == "G4" and sorted(col["neighbors"].split("-")) == sorted(words[1:3]) \
                and col["eta"] == float(words[3]) and col["lambda"] == float(words[4]) \
                and col["zeta"] == float(words[5]) and spec.cutoff == float(words[6]):
            return k
    raise AssertionError(f"no model column for symfunction_short line {words}")


def _n2p2_atomic_energies(out_dir: Path, spec, element: str, sf: np.ndarray) -> np.ndarray:
    """Atomic energies (eV, relative to the references) of descriptor rows ``sf`` (n, F) of ``element`` atoms,
    evaluated from the exported files the way n2p2 does: functions in input.nn order, (G - mean) / sigma,
    weights in NeuralNetwork::setConnections order, then the activations."""
    from ase.data import atomic_numbers

    nn = _read_input_nn(out_dir / "input.nn")
    e_index = nn["elements"].index(element) + 1
    cols = [_column_of(spec, words) for words in nn["sf"][element]]
    rows = [r for r in _data_rows(out_dir / "scaling.data") if int(r[0]) == e_index]
    assert [int(r[1]) for r in rows] == list(range(1, len(cols) + 1))
    mean = np.array([float(r[4]) for r in rows])
    sigma = np.array([float(r[5]) for r in rows])
    x = (sf[:, cols] - mean) / sigma
    flat = np.array([float(r[0]) for r in _data_rows(out_dir / f"weights.{atomic_numbers[element]:03d}.data")])
    sizes = [len(cols), *nn["nodes"], 1]
    acts = {"t": np.tanh, "l": lambda v: v, "p": lambda v: np.log1p(np.exp(v)),
            "s": lambda v: 1.0 / (1.0 + np.exp(-v))}
    pos = 0
    for (fan_in, fan_out), letter in zip(itertools.pairwise(sizes), nn["activations"]):
        W = flat[pos:pos + fan_in * fan_out].reshape(fan_in, fan_out)
        pos += fan_in * fan_out
        b = flat[pos:pos + fan_out]
        pos += fan_out
        x = acts[letter](x @ W + b)
    assert pos == flat.size
    return x[:, 0]


def _random_model(spec, *, members=1, hidden=(6, 5), activation="tanh", seed=0) -> BPNN:
    """A float64 BPNN with random weights, biases and statistics (no data needed)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = BPNN(spec.to_config(), hidden=hidden, activation=activation, members=members, dtype="float64",
                 reference_energies=REFERENCE_ENERGIES_TIO2)
    rng = np.random.default_rng(seed)
    S, F = len(spec.elements), spec.n_functions
    mean = rng.uniform(0.0, 2.0, (S, F))
    model.set_statistics(mean, rng.uniform(0.2, 1.5, (S, F)), mean - 1.0, mean + 1.0,
                         energy_shift=rng.normal(-3.0, 1.0, S), energy_scale=0.7)
    for net in model.nets:
        Ws, bs = net.member_weights()
        net.set_member_weights([W + rng.normal(0, 0.1, W.shape) for W in Ws],
                               [rng.normal(0, 0.3, b.shape) for b in bs])
    return model


def _model_atomic_energies(model, sf: np.ndarray, s: int) -> np.ndarray:
    import jax.numpy as jnp

    n = sf.shape[0]
    e = model.atomic_energies(jnp.asarray(sf[None]), jnp.full((1, n), s), jnp.ones((1, n), bool))
    return np.asarray(e, np.float64)[0]


# --------------------------------------------------------------- fast tests


@pytest.mark.parametrize("members", [1, 3])
def test_exported_files_compute_the_model(tmp_path, members):
    """input.nn, scaling.data and the weights files, evaluated as n2p2 reads them, give the model's atomic
    energies (a committee: the members' mean) on random descriptor vectors."""
    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    model = _random_model(spec, members=members)
    summary = export_n2p2(model, tmp_path / "nnp")
    out = tmp_path / "nnp"
    nn = _read_input_nn(out / "input.nn")
    assert nn["elements"] == ["O", "Ti"] and nn["n_elements"] == 2
    assert nn["atom_energy"] == REFERENCE_ENERGIES_TIO2
    assert nn["cutoff_type"] == ["1", "0.0"]
    assert "scale_symmetry_functions_sigma" in nn and "mean_energy" not in nn and "conv_length" not in nn
    assert nn["nodes"] == [6 * members, 5 * members] and nn["activations"] == ["t", "t", "l"]
    for el in ("O", "Ti"):
        assert len(nn["sf"][el]) == spec.n_functions == 70
        assert sorted(_column_of(spec, w) for w in nn["sf"][el]) == list(range(70))
    # Weights files: one value per connection and bias.
    sizes = [70, 6 * members, 5 * members, 1]
    n_params = sum(a * b + b for a, b in itertools.pairwise(sizes))
    for z in ("008", "022"):
        assert len(_data_rows(out / f"weights.{z}.data")) == n_params
    assert summary["n_weights"] == {"O": n_params, "Ti": n_params}
    assert len(_data_rows(out / "scaling.data")) == 2 * 70
    rng = np.random.default_rng(1)
    sf = rng.uniform(0.0, 3.0, (7, 70))
    for s, el in enumerate(model.elements):
        np.testing.assert_allclose(_n2p2_atomic_energies(out, spec, el, sf), _model_atomic_energies(model, sf, s),
                                   rtol=0, atol=1e-12)
    assert not (out / "repulsion.table").exists()
    assert (out / "lammps.in.snippet").read_text().splitlines()[1:] == [
        (f"pair_style hdnnp 6.5 dir {out} showew no showewsum 1000 maxew 1000000 resetew yes cflength 1.0 "
        "cfenergy 1.0"), "pair_coeff * * O Ti"]


def test_committee_exported_member_by_member_computes_the_committee(tmp_path):
    """--separate-members: one n2p2 network per member whose mean (LAMMPS pair_style hybrid/scaled, 1/K each)
    is the committee's atomic energy; the baseline table once, at scale 1."""
    from bpnn_jax.calculators.n2p2 import export_n2p2_members

    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    model = _random_model(spec, members=3)
    model.repulsion = PairRepulsion(("O", "Ti"), {"O-Ti": 1.6}, {"O-Ti": (40.0, 1.0, 900.0, 0.0, 2.0)})
    out = tmp_path / "sep"
    summary = export_n2p2_members(model, out, members=[0, 2])
    assert summary["members"] == [0, 2] and summary["member_dirs"] == [f"{out}/member_01", f"{out}/member_03"]
    rng = np.random.default_rng(2)
    sf = rng.uniform(0.0, 3.0, (5, 70))
    from bpnn_jax.model.ensemble import select_members

    pair = select_members(model, [0, 2])
    for s, el in enumerate(model.elements):
        mean = np.mean([_n2p2_atomic_energies(out / d, spec, el, sf) for d in ("member_01", "member_03")], axis=0)
        np.testing.assert_allclose(mean, _model_atomic_energies(pair, sf, s), rtol=0, atol=1e-12)
    lines = (out / "lammps.in.snippet").read_text().splitlines()[1:]
    assert lines[0].startswith("pair_style hybrid/scaled 0.5 hdnnp 6.5 dir " + f"{out}/member_01")
    assert f" 0.5 hdnnp 6.5 dir {out}/member_03 " in lines[0]
    assert lines[1:3] == ["pair_coeff * * hdnnp 1 O Ti", "pair_coeff * * hdnnp 2 O Ti"]
    assert lines[0].endswith(" 1.0 table linear 2000") and (out / "repulsion.table").exists()
    assert lines[3:] == [f"pair_coeff 1 2 table {out}/repulsion.table O-Ti 1.6"]
    assert not (out / "member_01" / "lammps.in.snippet").exists()


def test_n2p2_function_order(tmp_path):
    """Functions per element follow n2p2's sort (type, cut-off, eta, rs, zeta, lambda, neighbour elements by
    atomic number), and scaling.data's rows follow it: elements by atomic number (H before O)."""
    spec = SymmetryFunctionSet.imbalzano(("O", "H"), 5.0)
    model = _random_model(spec)
    export_n2p2(model, tmp_path)
    nn = _read_input_nn(tmp_path / "input.nn")
    assert nn["elements"] == ["H", "O"]
    z = {"H": 1, "O": 8}
    for el in ("H", "O"):
        keys = []
        for w in nn["sf"][el]:
            if w[0] == "2":
                keys.append((2, float(w[4]), float(w[2]), float(w[3]), 0.0, 0.0, z[w[1]], 0))
            else:
                keys.append((3, float(w[6]), float(w[3]), 0.0, float(w[5]), float(w[4]), *sorted((z[w[1]], z[w[2]]))))
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
    rows = _data_rows(tmp_path / "scaling.data")
    s_h = model.elements.index("H")
    cols_h = [_column_of(spec, w) for w in nn["sf"]["H"]]
    mean = np.asarray(model.sf_mean.value, np.float64)
    assert [float(r[4]) for r in rows if r[0] == "1"] == [mean[s_h, c] for c in cols_h]
    sf = np.random.default_rng(2).uniform(0.0, 3.0, (5, spec.n_functions))
    for s, el in enumerate(model.elements):
        np.testing.assert_allclose(_n2p2_atomic_energies(tmp_path, spec, el, sf), _model_atomic_energies(model, sf, s),
                                   rtol=0, atol=1e-12)


def test_chebyshev_members_are_refused(tmp_path, capsys):
    """The shipped tio2 committee: members 6-15 read the Chebyshev basis; the message names them and --members."""
    with pytest.raises(BPNNInputError, match=r"members 6-15 of 15 read Chebyshev.*--members 1-5"):
        export_n2p2("tio2", tmp_path / "all")
    assert not (tmp_path / "all").exists()
    assert main(["export-n2p2", "tio2", "--out", str(tmp_path / "cli"), "--members", "4-7"]) == 2
    err = capsys.readouterr().err
    assert "error: tio2: members 6-7 of 15 read Chebyshev" in err and "--members 1-5" in err
    assert "Traceback" not in err
    assert main(["export-n2p2", "tio2", "--out", str(tmp_path / "cli"), "--members", "16"]) == 2
    assert "member numbers from 1 to 15" in capsys.readouterr().err


def test_chebyshev_model_is_refused(tmp_path):
    model = BPNN(ChebyshevBasis.aenet(("O", "Ti")).to_config(), hidden=(4,), dtype="float64")
    with pytest.raises(BPNNInputError, match="descriptors are Chebyshev, which n2p2 cannot compute"):
        export_n2p2(model, tmp_path / "x")


def test_unknown_activation_is_refused(tmp_path):
    model = _random_model(SymmetryFunctionSet.artrith_urban(("O", "Ti")), activation="silu")
    with pytest.raises(BPNNInputError, match="activation 'silu' has no n2p2 equivalent"):
        export_n2p2(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_softplus_and_sigmoid_letters(tmp_path):
    spec = SymmetryFunctionSet(("O", "Ti"), 6.0, ((0.5, 0.0), (1.0, 2.0)), ((0.01, 1.0, 2),))
    for activation, letter in (("softplus", "p"), ("sigmoid", "s")):
        model = _random_model(spec, activation=activation)
        export_n2p2(model, tmp_path / activation)
        nn = _read_input_nn(tmp_path / activation / "input.nn")
        assert nn["activations"] == [letter, letter, "l"]
        sf = np.random.default_rng(3).uniform(0.0, 3.0, (4, spec.n_functions))
        np.testing.assert_allclose(_n2p2_atomic_energies(tmp_path / activation, spec, "Ti", sf),
                                   _model_atomic_energies(model, sf, 1), rtol=0, atol=1e-12)


def test_repulsion_table_equals_the_baseline(tmp_path):
    """Every pair's table rows are φ(r) and -dφ/dr of the model's baseline (float64), and the LAMMPS lines
    overlay hdnnp and the tables with the right type pairs."""
    rep = PairRepulsion(("O", "Ti"), {"O-O": 2.2, "O-Ti": 1.8, "Ti-Ti": 2.4},
                        {"O-O": (3.0, 0.0, 0.0, 0.0, 100.0), "O-Ti": (40.0, 1.0, 900.0, 0.0, 2.0),
                         "Ti-Ti": (70.0, 0.0, 0.0, 5.0, 1200.0)})
    spec = SymmetryFunctionSet.artrith_urban(("O", "Ti"))
    model = _random_model(spec)
    model.repulsion = rep
    summary = export_n2p2(model, tmp_path, table_points=500, table_r_min=0.6)
    assert summary["tables"] == {"O-O": 2.2, "O-Ti": 1.8, "Ti-Ti": 2.4}
    text = (tmp_path / "repulsion.table").read_text().splitlines()
    for pair, rc in summary["tables"].items():
        start = text.index(pair)
        assert text[start + 1] == f"N 500 RSQ 0.6 {rc!r}" and text[start + 2] == ""
        rows = np.array([[float(x) for x in line.split()] for line in text[start + 3:start + 503]])
        assert rows[:, 0].tolist() == list(range(1, 501))
        r_expected = np.sqrt(0.36 + np.arange(500) * (rc**2 - 0.36) / 499)
        np.testing.assert_allclose(rows[:, 1], r_expected, rtol=1e-15)
        assert rows[-1, 1] == rc and rows[-1, 2] == 0.0 and rows[-1, 3] == 0.0
        a, b = pair.split("-")
        species = np.array([model.elements.index(a), model.elements.index(b)])
        for k in (0, 1, 137, 498):
            r = rows[k, 1]
            pos = np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0]])
            e, f = rep.host_energy_forces(pos, np.eye(3) * 50.0, species, [0, 1], [1, 0], np.zeros((2, 3)))
            assert rows[k, 2] == pytest.approx(e, rel=1e-13, abs=1e-13)
            assert rows[k, 3] == pytest.approx(f[1, 0], rel=1e-13, abs=1e-13)  # -dφ/dr pushes atom 1 along +x
            assert f[0, 0] == pytest.approx(-f[1, 0], rel=1e-14)
        r, e, f = repulsion_table(rep, pair, 500, 0.6)
        np.testing.assert_array_equal(r, rows[:, 1])
    lines = (tmp_path / "lammps.in.snippet").read_text().splitlines()
    assert lines[1].startswith("pair_style hybrid/overlay hdnnp 6.5 dir ") and lines[1].endswith("table linear 500")
    assert lines[2:] == ["pair_coeff * * hdnnp O Ti",
                         f"pair_coeff 1 1 table {tmp_path}/repulsion.table O-O 2.2",
                         f"pair_coeff 1 2 table {tmp_path}/repulsion.table O-Ti 1.8",
                         f"pair_coeff 2 2 table {tmp_path}/repulsion.table Ti-Ti 2.4"]


def test_write_n2p2_data(tmp_path):
    from bpnn_jax.io import sample_data_dir, structure_energy

    atoms = read_xsf(sample_data_dir() / "structure0001.xsf")
    write_n2p2_data([atoms, atoms], tmp_path / "input.data")
    lines = (tmp_path / "input.data").read_text().splitlines()
    assert lines.count("begin") == 2 and lines.count("end") == 2
    block = lines[:lines.index("end") + 1]
    lattice = np.array([[float(x) for x in line.split()[1:]] for line in block if line.startswith("lattice ")])
    np.testing.assert_array_equal(lattice, atoms.cell.array)
    atom_lines = [line.split() for line in block if line.startswith("atom ")]
    assert [w[4] for w in atom_lines] == atoms.get_chemical_symbols()
    np.testing.assert_array_equal(np.array([[float(x) for x in w[1:4]] for w in atom_lines]), atoms.positions)
    np.testing.assert_array_equal(np.array([[float(x) for x in w[7:10]] for w in atom_lines]), atoms.get_forces())
    assert float(next(line for line in block if line.startswith("energy")).split()[1]) == structure_energy(atoms)
    atoms.pbc = (True, True, False)
    with pytest.raises(BPNNInputError, match="periodic in some directions only"):
        write_n2p2_data(atoms, tmp_path / "bad.data")


def test_format_members():
    assert format_members([0, 1, 2, 4, 6, 7]) == "1-3,5,7-8"
    assert format_members([3]) == "4"


# ---------------------------------------------- agreement with n2p2 (lammps)

#: Cells compared with nnp-predict: two six-atom cells (1632: shortest cell vector 2.36 Å, far below the 6.5 Å
#: cut-off, so atoms see many images of themselves), a 24-atom and a 46-atom cell.
AGREEMENT_FILES = ("structure1632.xsf", "structure1061.xsf", "structure0001.xsf", "structure7263.xsf")
ENERGY_TOL = 1e-8  # eV/atom
FORCE_TOL = 1e-6  # eV/Å


@pytest.fixture(scope="module")
def nnp_predict_bin() -> Path:
    """n2p2's nnp-predict from benchmarks/lammps/build.sh (or $BPNN_N2P2_BIN); fails if it is missing or unpatched."""
    cache = Path(os.environ.get("BPNN_TOOLS_CACHE", Path.home() / ".cache" / "bpnn_jax_tools")).expanduser()
    binary = Path(os.environ.get("BPNN_N2P2_BIN", cache / "n2p2" / "bin" / "nnp-predict")).expanduser()
    how = f"build it with `bash {REPO_ROOT / 'benchmarks/lammps/build.sh'}` (about 2 minutes on 2 cores)"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"n2p2's nnp-predict not found at {binary}: {how}, or point BPNN_N2P2_BIN at one", pytrace=False)
    note = binary.resolve().parent.parent / "BPNN_BUILD"
    if "self-image-force-patch=1" not in (note.read_text() if note.exists() else ""):
        pytest.fail(f"{binary} is not the patched build of build.sh ({note} missing or unpatched): stock n2p2 "
                    f"(61daa0d) drops force terms from periodic images of the centre atom, so its forces are wrong "
                    f"in cells narrower than the cut-off; {how}", pytrace=False)
    return binary


def _compare(model_bpnn, export_dir, binary, files, tmp_path, *, baseline=None):
    """Max |ΔE| (eV/atom) and |ΔF| (eV/Å) between bpnn_jax (float64 calculator, baseline included) and
    nnp-predict plus ``baseline`` (bpnn_jax's pair term, which n2p2 lacks), per file."""
    from ase.neighborlist import neighbor_list

    from bpnn_jax.calculators.ase import BPNNCalculator
    from bpnn_jax.calculators.n2p2 import nnp_predict

    calc = BPNNCalculator(model_bpnn, dtype="float64", warn_extrapolation=False)
    refs = model_bpnn.reference_energies
    report = {}
    for path in files:
        atoms = read_xsf(path)
        e_n2p2, offset, f_n2p2 = nnp_predict(atoms, export_dir, binary, workdir=tmp_path / path.stem)
        assert offset == pytest.approx(sum(refs[s] for s in atoms.get_chemical_symbols()), abs=1e-9)
        if baseline is not None:
            species = np.array([model_bpnn.elements.index(s) for s in atoms.get_chemical_symbols()])
            i, j, shifts = neighbor_list("ijS", atoms, baseline.max_cutoff)
            e_rep, f_rep = baseline.host_energy_forces(atoms.positions, atoms.cell.array, species, i, j, shifts)
            e_n2p2, f_n2p2 = e_n2p2 + e_rep, f_n2p2 + f_rep
        atoms.calc = calc
        n = len(atoms)
        report[path.name] = (abs(e_n2p2 - atoms.get_potential_energy()) / n,
                             float(np.abs(f_n2p2 - atoms.get_forces()).max()))
    return report


def _check(report):
    lines = "; ".join(f"{name}: |dE| {de:.1e} eV/atom, |dF| {df:.1e} eV/Å" for name, (de, df) in report.items())
    print(lines)
    assert all(de <= ENERGY_TOL and df <= FORCE_TOL for de, df in report.values()), lines


@pytest.mark.lammps
def test_nnp_predict_single_network_artrith_urban(nnp_predict_bin, make_random_model, data_dir, tmp_path):
    """(a) One network (8 x 8 tanh, random weights) on the 70 Artrith-Urban functions: nnp-predict's energies
    and forces equal bpnn_jax's in float64, thin six-atom cells included."""
    from bpnn_jax.io import sample_data_dir

    atoms_list = [read_xsf(p) for p in sorted(sample_data_dir().glob("*.xsf"))[:20]]
    model = make_random_model(atoms_list, hidden=(8, 8), seed=3)
    export_n2p2(model, tmp_path / "au")
    files = [data_dir / name for name in AGREEMENT_FILES]
    _check(_compare(model, tmp_path / "au", nnp_predict_bin, files, tmp_path))


@pytest.mark.lammps
def test_nnp_predict_tio2_imbalzano_committee(nnp_predict_bin, data_dir, tmp_path):
    """(b) The shipped tio2 committee's Imbalzano members (--members 1-5, exported by the command line) as one
    n2p2 network: nnp-predict plus bpnn_jax's pair baseline equals the whole model (baseline included) in
    float64."""
    from bpnn_jax.model import load_model
    from bpnn_jax.model.ensemble import select_members

    assert main(["export-n2p2", "tio2", "--out", str(tmp_path / "tio2"), "--members", "1-5"]) == 0
    model = select_members(load_model("tio2"), list(range(5)))
    assert model.repulsion is not None
    files = [data_dir / name for name in AGREEMENT_FILES]
    _check(_compare(model, tmp_path / "tio2", nnp_predict_bin, files, tmp_path, baseline=model.repulsion))


# ------------------------------------------------ agreement with LAMMPS (lammps)

#: Cells run in LAMMPS (run 0): the four above, a rutile 2 x 2 x 3 supercell (72 atoms, atoms displaced) and
#: structure0001 under a shear strain (a triclinic box: exercises the rotation into LAMMPS's frame).
LAMMPS_TABLE_POINTS = 2000
#: The pair table's linear interpolation (2000 rows in r^2) differs from the baseline by up to 2.4e-4 eV per
#: Ti-Ti pair and 7e-4 eV/Å above 1 Å (docs/n2p2.md): bounds for the whole potential (networks + table).
TABLE_ENERGY_TOL = 1e-4  # eV/atom
TABLE_FORCE_TOL = 3e-3  # eV/Å


def _lammps_io():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lammps_io", REPO_ROOT / "benchmarks" / "lammps" / "lammps_io.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def lammps_io():
    """benchmarks/lammps/lammps_io.py, once LAMMPS (build.sh --lammps) is there; fails otherwise."""
    mod = _lammps_io()
    if not mod.have_lammps():
        pytest.fail(f"LAMMPS with ML-HDNNP not found at {mod.lammps_binary()}: {mod.how_to_build()}", pytrace=False)
    return mod


def _lammps_cells(data_dir):
    from ase import Atoms

    cells = {name: read_xsf(data_dir / name) for name in AGREEMENT_FILES}
    sheared = cells["structure0001.xsf"].copy()
    strain = np.array([[1.0, 0.0, 0.0], [0.21, 1.0, 0.0], [-0.17, 0.13, 1.0]])
    sheared.set_cell(sheared.cell.array @ strain, scale_atoms=True)
    cells["structure0001_sheared"] = sheared
    a, c, u = 4.594, 2.959, 0.305
    frac = [(0, 0, 0), (0.5, 0.5, 0.5), (u, u, 0), (1 - u, 1 - u, 0), (0.5 + u, 0.5 - u, 0.5), (0.5 - u, 0.5 + u, 0.5)]
    rutile = Atoms("Ti2O4", scaled_positions=frac, cell=[a, a, c], pbc=True).repeat((2, 2, 3))
    rutile.positions += np.random.default_rng(7).normal(0.0, 0.05, rutile.positions.shape)
    cells["rutile_2x2x3"] = rutile
    return cells


def lammps_tio2_agreement(lammps_io, data_dir, tmp_path, *, table_points=LAMMPS_TABLE_POINTS, nprocs=1):
    """Run 0 in LAMMPS of the exported tio2 members 1-5 on :func:`_lammps_cells`, against BPNNCalculator (float64).

    Returns ``{cell: {"net": (dE, dF), "table": (dE, dF), "total": (dE, dF)}}``, max |ΔE| per atom (eV) and
    |ΔF| (eV/Å) of: ``net``, ``pair_style hdnnp`` alone against the model without its baseline; ``table``,
    what the table adds in LAMMPS (hybrid/overlay minus hdnnp) against the baseline (bpnn_jax's
    ``PairRepulsion.host_energy_forces``); ``total``, the export's hybrid/overlay lines (as printed by
    export-n2p2) against the whole model.
    """
    from ase.neighborlist import neighbor_list

    from bpnn_jax.calculators.ase import BPNNCalculator
    from bpnn_jax.calculators.n2p2 import lammps_lines
    from bpnn_jax.model import load_model
    from bpnn_jax.model.ensemble import select_members

    out = tmp_path / "tio2"
    assert main(["export-n2p2", "tio2", "--out", str(out), "--members", "1-5",
                 "--table-points", str(table_points)]) == 0
    hybrid = [line for line in (out / "lammps.in.snippet").read_text().splitlines() if not line.startswith("#")]
    full = select_members(load_model("tio2", dtype="float64"), list(range(5)))
    net = select_members(load_model("tio2", dtype="float64"), list(range(5)))
    net.repulsion = None
    baseline = full.repulsion
    elements = list(full.elements)
    cutoff = float(hybrid[0].split()[3])
    hdnnp = lammps_lines(elements, cutoff, str(out), None)[1:]
    calc_full = BPNNCalculator(full, dtype="float64", warn_extrapolation=False)
    calc_net = BPNNCalculator(net, dtype="float64", warn_extrapolation=False)
    report = {}
    for name, atoms in _lammps_cells(data_dir).items():
        n = len(atoms)
        wd = tmp_path / name
        e_h, f_h = lammps_io.energy_forces(atoms, elements, hdnnp, wd / "hdnnp", nprocs=nprocs)
        e_t, f_t = lammps_io.energy_forces(atoms, elements, hybrid, wd / "hybrid", nprocs=nprocs)
        a = atoms.copy()
        a.calc = calc_net
        e_net, f_net = a.get_potential_energy(), a.get_forces()
        a = atoms.copy()
        a.calc = calc_full
        e_full, f_full = a.get_potential_energy(), a.get_forces()
        species = np.array([elements.index(s) for s in atoms.get_chemical_symbols()])
        i, j, shifts = neighbor_list("ijS", atoms, baseline.max_cutoff)
        e_rep, f_rep = baseline.host_energy_forces(atoms.positions, atoms.cell.array, species, i, j, shifts)
        report[name] = {
            "net": (abs(e_h - e_net) / n, float(np.abs(f_h - f_net).max())),
            "table": (abs((e_t - e_h) - e_rep) / n, float(np.abs((f_t - f_h) - f_rep).max())),
            "total": (abs(e_t - e_full) / n, float(np.abs(f_t - f_full).max())),
            "n_atoms": n,
        }
    return report


@pytest.mark.lammps
def test_lammps_tio2_imbalzano_committee(lammps_io, data_dir, tmp_path):
    """The shipped tio2 committee's members 1-5 in LAMMPS (pair_style hdnnp, hybrid/overlay with the baseline
    table as export-n2p2 prints it), run 0 on 1 MPI rank: the networks equal bpnn_jax's float64 calculator
    (without the baseline) to 1e-8 eV/atom and 1e-6 eV/Å on thin, small, triclinic and rutile cells; the table
    adds the baseline within its interpolation error, and the whole within that too."""
    report = lammps_tio2_agreement(lammps_io, data_dir, tmp_path)
    for name, r in report.items():
        print(f"{name} ({r['n_atoms']} atoms): " + "; ".join(
            f"{k} |dE| {r[k][0]:.1e} eV/atom, |dF| {r[k][1]:.1e} eV/Å" for k in ("net", "table", "total")))
    for name, r in report.items():
        assert r["net"][0] <= ENERGY_TOL and r["net"][1] <= FORCE_TOL, (name, r)
        for k in ("table", "total"):
            assert r[k][0] <= TABLE_ENERGY_TOL and r[k][1] <= TABLE_FORCE_TOL, (name, k, r)


@pytest.mark.lammps
def test_lammps_member_by_member_export_equals_the_block_network(lammps_io, data_dir, tmp_path):
    """``export-n2p2 --separate-members`` (pair_style hybrid/scaled of one hdnnp per member, 1/5 each, with
    the baseline table) and the block-diagonal export of tio2's members 1-5 give the same energies (1e-10
    eV/atom) and forces (1e-10 eV/Å) in LAMMPS, run 0, on thin, small, triclinic and rutile cells."""
    block, sep = tmp_path / "block", tmp_path / "separate"
    assert main(["export-n2p2", "tio2", "--out", str(block), "--members", "1-5"]) == 0
    assert main(["export-n2p2", "tio2", "--out", str(sep), "--members", "1-5", "--separate-members"]) == 0

    def lines(d):
        return [line for line in (d / "lammps.in.snippet").read_text().splitlines() if not line.startswith("#")]

    for name, atoms in _lammps_cells(data_dir).items():
        e1, f1 = lammps_io.energy_forces(atoms, ["O", "Ti"], lines(block), tmp_path / name / "block")
        e2, f2 = lammps_io.energy_forces(atoms, ["O", "Ti"], lines(sep), tmp_path / name / "separate")
        assert abs(e1 - e2) / len(atoms) < 1e-10 and np.abs(f1 - f2).max() < 1e-10, name


@pytest.mark.lammps
def test_lammps_two_ranks_equal_one(lammps_io, data_dir, tmp_path):
    """run 0 on 2 MPI ranks (domains split, ghost atoms across ranks) equals 1 rank to round-off: tio2 member 1
    with its baseline table, on the thin six-atom cell, the sheared cell and the rutile supercell."""
    out = tmp_path / "m1"
    assert main(["export-n2p2", "tio2", "--out", str(out), "--members", "1"]) == 0
    pair = [line for line in (out / "lammps.in.snippet").read_text().splitlines() if not line.startswith("#")]
    cells = _lammps_cells(data_dir)
    for name in ("structure1632.xsf", "structure0001_sheared", "rutile_2x2x3"):
        atoms = cells[name]
        e1, f1 = lammps_io.energy_forces(atoms, ["O", "Ti"], pair, tmp_path / name / "np1", nprocs=1)
        e2, f2 = lammps_io.energy_forces(atoms, ["O", "Ti"], pair, tmp_path / name / "np2", nprocs=2)
        print(f"{name}: 1 vs 2 ranks |dE| {abs(e1 - e2) / len(atoms):.1e} eV/atom, |dF| {np.abs(f1 - f2).max():.1e} eV/Å")
        assert abs(e1 - e2) / len(atoms) <= 1e-10 and np.abs(f1 - f2).max() <= 1e-9, name
