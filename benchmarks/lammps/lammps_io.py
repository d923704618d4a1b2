"""Running the LAMMPS build of ``build.sh --lammps`` from Python: data files, ``run 0``, thermo logs.

Used by ``tests/calculators/test_n2p2.py`` (``pytest -m lammps``), ``md_rutile.py`` and ``timing.py``.

* :func:`lammps_binary` finds ``lmp`` (``$BPNN_LMP_BIN``, else
  ``$BPNN_TOOLS_CACHE`` or ``~/.cache/bpnn_jax_tools`` + ``lammps/build/lmp``).
* :func:`write_data` writes an ASE ``Atoms`` as a LAMMPS ``atom_style atomic``
  data file.  LAMMPS wants a lower-triangular cell (a along x, b in the xy
  plane) with small tilts, so the cell is rotated and its tilts reduced by
  lattice vectors (the same periodic structure); the rotation is returned so
  that LAMMPS's forces can be rotated back.
* :func:`run_lammps` runs an input deck (``mpirun -np N`` for N > 1).
* :func:`energy_forces` does ``run 0`` with some pair lines and returns the
  energy (eV) and forces (eV/Å) in the frame of the ``Atoms``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"


def tools_cache() -> Path:
    return Path(os.environ.get("BPNN_TOOLS_CACHE", Path.home() / ".cache" / "bpnn_jax_tools")).expanduser()


def lammps_binary() -> Path:
    """Path of ``lmp`` (it may not exist: check with :func:`have_lammps`)."""
    return Path(os.environ.get("BPNN_LMP_BIN", tools_cache() / "lammps" / "build" / "lmp")).expanduser()


def have_lammps() -> bool:
    b = lammps_binary()
    return b.is_file() and os.access(b, os.X_OK)


def how_to_build() -> str:
    return (f"build it with `bash {BUILD_SCRIPT} --lammps` (Debian's lammps source package, needs a deb-src "
            f"entry for bookworm: see docs/n2p2.md; about 25 minutes on 2 cores), or point BPNN_LMP_BIN at an "
            f"lmp with ML-HDNNP")


def lammps_cell(cell: np.ndarray):
    """A LAMMPS box for the cell rows ``cell`` (3, 3): ``(box, rotation)``.

    ``box`` = (lx, ly, lz, xy, xz, yz) of the lower-triangular cell, tilts
    reduced to |xy|, |xz| <= lx/2 and |yz| <= ly/2 by adding lattice vectors;
    ``rotation`` (3, 3) is orthogonal with ``r_lammps = r @ rotation``.
    """
    a, b, c = np.asarray(cell, np.float64)
    lx = np.linalg.norm(a)
    ahat = a / lx
    xy = b @ ahat
    ly = np.sqrt(b @ b - xy**2)
    xz = c @ ahat
    yz = (b @ c - xy * xz) / ly
    lz = np.sqrt(c @ c - xz**2 - yz**2)
    new = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    rotation = np.linalg.solve(np.asarray(cell, np.float64), new)  # cell @ rotation = new
    A, B, C = new
    C = C - np.round(C[1] / B[1]) * B
    C = C - np.round(C[0] / A[0]) * A
    B = B - np.round(B[0] / A[0]) * A
    return (A[0], B[1], C[2], B[0], C[0], C[1]), rotation


def write_data(atoms, path, elements, masses=None) -> np.ndarray:
    """Write ``atoms`` as a LAMMPS data file (``atom_style atomic``; type t = ``elements[t-1]``).

    Returns the rotation (3, 3) with ``r_lammps = r @ rotation`` (forces the same way).
    """
    from ase.data import atomic_masses, atomic_numbers

    if not all(atoms.pbc):
        raise ValueError("write_data: only fully periodic cells")
    (lx, ly, lz, xy, xz, yz), rotation = lammps_cell(atoms.cell.array)
    lx, ly, lz, xy, xz, yz = (float(v) for v in (lx, ly, lz, xy, xz, yz))
    box = np.array([[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]])
    pos = atoms.positions @ rotation
    frac = np.linalg.solve(box.T, pos.T).T
    frac -= np.floor(frac)
    pos = frac @ box
    symbols = atoms.get_chemical_symbols()
    lines = [f"# {len(atoms)} atoms, written by benchmarks/lammps/lammps_io.py", "",
             f"{len(atoms)} atoms", f"{len(elements)} atom types", "",
             f"0.0 {lx!r} xlo xhi", f"0.0 {ly!r} ylo yhi", f"0.0 {lz!r} zlo zhi"]
    if any(t != 0.0 for t in (xy, xz, yz)):
        lines.append(f"{xy!r} {xz!r} {yz!r} xy xz yz")
    lines += ["", "Masses", ""]
    for t, el in enumerate(elements, 1):
        m = masses[el] if masses else atomic_masses[atomic_numbers[el]]
        lines.append(f"{t} {float(m)!r}")
    lines += ["", "Atoms # atomic", ""]
    for i, (s, p) in enumerate(zip(symbols, pos), 1):
        lines.append(f"{i} {elements.index(s) + 1} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}")
    Path(path).write_text("\n".join(lines) + "\n")
    return rotation


def mpirun_prefix(nprocs: int) -> list[str]:
    if nprocs <= 1:
        return []
    mpirun = shutil.which("mpirun") or "mpirun"
    extra = ["--allow-run-as-root", "--oversubscribe"] if "openmpi" in os.path.realpath(mpirun) or _is_openmpi() \
        else []
    return [mpirun, *extra, "-np", str(nprocs)]


def _is_openmpi() -> bool:
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out or "OpenRTE" in out


def run_lammps(deck, workdir, *, nprocs: int = 1, timeout: float = 3600.0, binary=None,
               log_name: str = "log.lammps", variables: dict | None = None) -> str:
    """Run an input deck in ``workdir`` (created); returns LAMMPS's log text. Raises on failure.

    ``deck``: the input text (written to ``workdir/in.lammps``) or the :class:`~pathlib.Path` of an input
    file; ``variables``: ``-var NAME VALUE`` pairs.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(deck, Path):
        infile = str(deck.resolve())
    else:
        (workdir / "in.lammps").write_text(deck)
        infile = "in.lammps"
    binary = str(binary or lammps_binary())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [*mpirun_prefix(nprocs), binary, "-in", infile, "-log", log_name, "-screen", "none"]
    for name, value in (variables or {}).items():
        cmd += ["-var", name, str(value)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    log = (workdir / log_name).read_text() if (workdir / log_name).exists() else ""
    if proc.returncode != 0 or "ERROR" in log:
        tail = "\n".join((log or proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"LAMMPS failed (rc {proc.returncode}) in {workdir}: {' '.join(cmd)}\n{tail}\n"
                           f"{proc.stderr[-2000:]}")
    return log


def read_dump_forces(path) -> np.ndarray:
    """Forces (N, 3) of a ``dump custom ... id fx fy fz`` file (sorted by id), last frame."""
    lines = Path(path).read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    rows = np.array([[float(x) for x in line.split()] for line in lines[start + 1:] if line.strip()])
    rows = rows[np.argsort(rows[:, 0])]
    return rows[:, 1:4]


def energy_forces(atoms, elements, pair_lines, workdir, *, nprocs: int = 1, binary=None):
    """``run 0`` of ``atoms`` with ``pair_lines`` (pair_style and pair_coeff lines, units metal).

    Returns ``(energy eV, forces (N, 3) eV/Å)`` in the frame of ``atoms``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rotation = write_data(atoms, workdir / "data.lmp", elements)
    deck = "\n".join([
        "units metal", "atom_style atomic", "boundary p p p", "atom_modify map array",
        "read_data data.lmp", *pair_lines, "neighbor 1.0 bin",
        "thermo_style custom step pe", "thermo_modify format float %20.15g",
        "dump forces all custom 1 forces.dump id fx fy fz",
        "dump_modify forces sort id format float %22.17g",
        "run 0", 'print "BPNN_PE $(pe:%.17g)"', ""])
    log = run_lammps(deck, workdir, nprocs=nprocs, binary=binary)
    energy = float(re.findall(r"^BPNN_PE (\S+)", log, re.MULTILINE)[-1])
    forces = read_dump_forces(workdir / "forces.dump") @ rotation.T
    return energy, forces


def thermo_table(log: str) -> list[dict]:
    """The thermo rows of a LAMMPS log (every run), as dicts keyed by the header words."""
    rows, header = [], None
    for line in log.splitlines():
        words = line.split()
        if words and words[0] == "Step":
            header = words
            continue
        if header is None:
            continue
        if line.startswith("Loop time") or not words:
            header = None
            continue
        try:
            values = [float(w) for w in words]
        except ValueError:  # e.g. pair_style hdnnp's "### NNP EW SUMMARY ###" lines between thermo rows
            continue
        if len(values) == len(header):
            rows.append(dict(zip(header, values)))
    return rows


def loop_time(log: str) -> list[tuple[float, int, int, int]]:
    """``(seconds, procs, steps, atoms)`` of every ``Loop time of ...`` line."""
    pat = re.compile(r"^Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms", re.MULTILINE)
    return [(float(a), int(b), int(c), int(d)) for a, b, c, d in pat.findall(log)]
