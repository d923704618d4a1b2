"""Benchmark: TorchANI's AEV (forward, and forces by autograd) on the TiO2 structures of the speed suite.

Usage (in a separate environment: TorchANI is a benchmark extra, never a dependency)::

    python -m venv /tmp/ani && /tmp/ani/bin/pip install torch==2.13.0 torchani ase
    /tmp/ani/bin/python benchmarks/torchani_compare.py [--data DIR] [--every 9] [--threads 2] [--out-dir DIR]

The structures are every ``--every``-th XSF file of the data, as in
``benchmarks/speed_suite.py`` (782 for the TiO2 set), read with ASE (the
positions and cell; energies are not needed).  TorchANI's periodic AEV
takes one cell per call, so every structure is one call, as a TorchANI
user would run them.  Two settings of ``AEVComputer.like_1x`` for two
species (128 features per atom: 2 × 16 radial + 3 × 32 angular):

* ``ani1x``: ANI-1x's cut-offs (radial 5.2 Å, angular 3.5 Å);
* ``rc6.5``: radial 6.5 Å, angular 6.49 Å (TorchANI needs it below the radial one), as the shipped ``tio2`` descriptors.

Measured, after one untimed pass: seconds of the forward pass over all
structures, and of forward + backward (the gradient of a fixed random
linear function of the AEVs by the positions: what forces cost), in µs
per atom.  This script imports neither JAX nor bpnn_jax; our figures for
the same structures come from ``speed_suite_cpu.md`` (same machine).

Writes ``<out-dir>/torchani_compare_<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("BPNN_DATA_DIR", str(REPO.parent / "shared" / "data" / "tio2")))
    ap.add_argument("--every", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--neighborlist", default="all_pairs",
                    help="TorchANI neighbour list (default all_pairs; cell_list refuses cells narrower than its cut-off)")
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--tag", default="cpu")
    args = ap.parse_args(argv)
    os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

    import ase.io
    import numpy as np
    import torch
    import torchani
    from torchani.aev import AEVComputer

    torch.set_num_threads(args.threads)
    files = sorted(Path(args.data).glob("*.xsf"))[::args.every]
    structures = []
    for f in files:
        a = ase.io.read(f)
        z = np.array([0 if s == "O" else 1 for s in a.get_chemical_symbols()])
        structures.append((torch.tensor(z[None]), torch.tensor(a.positions[None], dtype=torch.float32),
                           torch.tensor(np.asarray(a.cell), dtype=torch.float32), torch.tensor([True, True, True])))
    n_atoms = sum(s[0].shape[1] for s in structures)
    res = {"benchmark": "torchani_compare", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
                       "torch": torch.__version__, "torchani": torchani.__version__, "neighborlist": args.neighborlist,
                       "python": platform.python_version()},
           "structures": len(structures), "atoms": n_atoms, "settings": {}}
    for name, kw in (("ani1x", {}), ("rc6.5", {"radial_cutoff": 6.5, "angular_cutoff": 6.49})):
        aev = AEVComputer.like_1x(num_species=2, neighborlist=args.neighborlist, **kw)
        w = torch.randn(aev.out_dim, generator=torch.Generator().manual_seed(0))

        def forward():
            for z, r, cell, pbc in structures:
                with torch.no_grad():
                    aev(z, r, cell=cell, pbc=pbc)

        def forces():
            for z, r, cell, pbc in structures:
                r = r.clone().requires_grad_(True)
                (aev(z, r, cell=cell, pbc=pbc) @ w).sum().backward()

        entry = {"features": int(aev.out_dim)}
        for what, fn in (("forward", forward), ("forces", forces)):
            fn()  # untimed: allocations, first-call paths
            t = time.perf_counter()
            fn()
            s = time.perf_counter() - t
            entry[f"{what}_s"] = round(s, 3)
            entry[f"{what}_us_per_atom"] = round(1e6 * s / n_atoms, 1)
            print(f"{name} {what}: {s:.2f} s, {1e6 * s / n_atoms:.1f} µs/atom", flush=True)
        res["settings"][name] = entry
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"torchani_compare_{args.tag}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    m = res["machine"]
    lines = [f"# TorchANI AEV on the speed suite's TiO2 structures ({args.tag})", "",
             f"{res['date']} · {res['structures']} structures, {n_atoms} atoms · one call per structure (periodic, "
             f"neighbour list `{args.neighborlist}`) · float32", "",
             f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['threads']} torch threads · torch {m['torch']}, "
             f"TorchANI {m['torchani']}, Python {m['python']}", "",
             "| setting | features per atom | forward µs/atom | forward + forces µs/atom |", "|---|---|---|---|"]
    for name, e in res["settings"].items():
        lines.append(f"| {name} | {e['features']} | {e['forward_us_per_atom']} | {e['forces_us_per_atom']} |")
    lines += ["", "`ani1x`: ANI-1x cut-offs (radial 5.2 Å, angular 3.5 Å); `rc6.5`: radial 6.5 Å, angular 6.49 Å, as the shipped "
              "`tio2` descriptors (Imbalzano, 96 functions). Ours on the same structures and machine: "
              "`speed_suite_cpu.md`.", "",
              f"Command: `python benchmarks/torchani_compare.py --every {args.every} --threads {args.threads} "
              f"--neighborlist {args.neighborlist}`"]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
