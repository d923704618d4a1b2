"""Regenerate the tables of docs/performance.md from the JSON results in benchmarks/results/.

    python benchmarks/make_performance_doc.py            # rewrite the generated tables in place
    python benchmarks/make_performance_doc.py --check    # exit 1 if docs/performance.md is out of date

The document holds blocks

    <!-- generated: NAME (python benchmarks/make_performance_doc.py) -->
    ...
    <!-- end generated: NAME -->

and only their contents are rewritten (the prose around them is left alone).  Each block is one
table built from the JSON file(s) named in :data:`TABLES`; under it, each source file is named
with its date and machine, the load averages and the file's own notes and errors.  A result
rewritten by a benchmark script without running this script makes ``--check`` (and
``tests/test_performance_doc.py``) fail.  Only the standard library is used (no JAX import).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "performance.md"
#: The results directory as a link from docs/.
LINK = "../benchmarks/results"

BEGIN = "<!-- generated: {name} (python benchmarks/make_performance_doc.py) -->"
END = "<!-- end generated: {name} -->"
BLOCK = re.compile(
    r"(?P<begin><!-- generated: (?P<name>[\w-]+) \(python benchmarks/make_performance_doc\.py\) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- end generated: (?P=name) -->)",
    re.DOTALL,
)


# --------------------------------------------------------------------------------------------- helpers

def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def num(x, digits: int = 3) -> str:
    """3 significant digits (integers above 10**digits as they are); '—' for None."""
    if x is None:
        return "—"
    if isinstance(x, int):
        return f"{x:,}".replace(",", " ") if abs(x) >= 10_000 else str(x)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}".replace(",", " ")
    s = f"{x:.{digits}g}"
    return s if "e" not in s else f"{x:.1e}"


def machine(d: dict) -> str:
    """One line for the machine of a result, for either layout of the ``machine`` block."""
    m = d.get("machine", {})
    if "cpu_cores" in m:  # bench_common.machine_info
        cpu = f"{m['cpu_model']}{' (' + m['cpu_simd'] + ')' if m.get('cpu_simd') else ''}, {m['cpu_cores']} cores"
        dev, kind, jax = m.get("device"), m.get("device_kind"), m.get("jax")
    elif "lscpu" in m:  # benchmarks/lammps/timing.py
        cpu = f"{m['lscpu'].get('Model name', '?')}, {m.get('nproc', '?')} cores"
        dev = kind = jax = None
    else:  # benchmarks/featurize.py
        cpu = f"{m.get('cpu_model', '?')}, {m.get('nproc', '?')} cores"
        dev, kind, jax = m.get("jax_device"), m.get("jax_device_kind"), m.get("jax_version")
    parts = [cpu]
    if dev:
        parts.append(f"device `{dev}`" + (f" ({kind})" if kind and kind != "cpu" else ""))
    if jax:
        parts.append(f"JAX {jax}")
    if d.get("dtype"):
        parts.append(str(d["dtype"]))
    return ", ".join(parts)


def load_averages(d: dict) -> str:
    start = d.get("load_average_start") or d.get("machine", {}).get("load_average_start")
    end = d.get("load_average_end")
    if not start:
        return ""
    return f"; load average {start[0]:.2f} at the start" + (f", {end[0]:.2f} at the end" if end else "")


def source(name: str, d: dict, what: str = "") -> str:
    """The line naming a source file: link, date, machine, load, and the file's notes and errors."""
    md = f" ([.md]({LINK}/{name}.md))" if (RESULTS / f"{name}.md").exists() else ""
    date = str(d.get("date", "?"))[:10]
    line = f"[`{name}.json`]({LINK}/{name}.json){md}{what}: {date}, {machine(d)}{load_averages(d)}."
    for e in d.get("errors") or []:
        line += f" Failed part: {e}."
    notes = [n for n in d.get("notes") or [] if not n.startswith("part '")]
    if notes:
        line += " Notes in the file: " + " ".join(n if n.endswith(".") else n + "." for n in notes)
    return line


def sources(*entries) -> list[str]:
    """``entries`` are (name, data[, what]); one line or a list of them."""
    lines = [source(*e) for e in entries]
    if len(lines) == 1:
        return ["", "Source: " + lines[0]]
    return ["", "Sources:", ""] + [f"* {x}" for x in lines]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def minutes(s) -> str:
    return "—" if s is None else f"{s / 60:.1f} min"


# ---------------------------------------------------------------------------------------------- tables

def t_cpu_suite() -> list[str]:
    name = "speed_suite_cpu"
    d = load(name)
    rows = []
    for label, p in d.get("process", {}).items():
        rows.append([f"`{label}`, whole process", f"{num(p.get('cold_s'))} s", f"{num(p.get('warm_s'))} s"])
    dc = d.get("dscribe_compare") or {}
    ours = (dc.get("ours") or {}).get("float32")
    if ours:
        st = dc.get("settings", {})
        what = (f"the {st.get('n_functions')} symmetry functions of the same structures in one process "
                f"({num(st.get('n_structures'))} structures, {num(st.get('n_atoms'))} atoms, float32): "
                "compilation / steady")
        rows.append([what,
                     f"{num(ours['compile_s'])} s",
                     f"**{num(ours['us_per_atom'])} µs/atom** ({num(ours['wall_s'])} s)"])
    ds = dc.get("dscribe")
    if ds:
        ratio = (dc.get("ratios_dscribe_over_ours") or {}).get("float32", {})
        what = (f"DScribe {dc.get('dscribe_version')} ACSF, the same functions and structures, "
                f"{ds.get('n_jobs')} processes")
        figure = (f"{num(ds['us_per_atom'])} µs/atom: ours {num(ratio.get('functions_steady'))}× faster, "
                  f"{num(ratio.get('with_neighbor_lists_steady'))}× with neighbour lists")
        rows.append([what, "—", figure])
    out = table(["what", "cold (empty compilation cache) / compilation", "warm (persistent cache) / steady"], rows)
    return out + sources((name, d))


def _md_rows(entries, gpu: bool = False) -> list[list[str]]:
    rows = []
    for name, d in entries:
        for r in d.get("sizes", []):
            ratio = r.get("step_over_forward")
            row = [num(r["n_atoms"]), f"**{num(r['us_per_atom_step'])}**", num(r.get("step_ms")),
                   num(r.get("model_ms"))]
            if gpu:
                row += [num(r.get("host_ms"))]
            else:
                row += [num(r.get("forward_ms")),
                        "—" if ratio is None else
                        f"{num(ratio)} ({num(r.get('step_over_forward_min'))}–{num(r.get('step_over_forward_max'))})"]
            row += [num(r.get("nl_build_ms")), str(r.get("steps_timed")), f"`{name}`"]
            rows.append(row)
    return rows


def _md_intro(d: dict) -> str:
    s = d.get("settings", {})
    model = f"`{s['model']}`" if s.get("model") else "the shipped model of its date"
    forces = {True: " (every member's forces)",
              False: " (forces of the committee mean)"}.get(s.get("member_forces"), "")
    return (f"`python benchmarks/md_inference.py`: {model}, energy, forces and stress{forces}, "
            f"{s.get('structure', 'rutile')}; wall-clock medians of the timed steps:")


def t_cpu_md() -> list[str]:
    entries = [(n, load(n)) for n in ("md_inference_cpu-tio2-fineslots", "md_inference_cpu-tio2-fineslots-96")]
    header = ["atoms", "µs/atom/step", "step ms", "model ms", "forward ms", "step / forward (range)",
              "neighbour list ms", "steps", "file"]
    return [_md_intro(entries[0][1]), ""] + table(header, _md_rows(entries)) + sources(*entries)


def t_gpu_md() -> list[str]:
    name = "md_inference_gpu"
    d = load(name)
    header = ["atoms", "µs/atom/step", "step ms", "model ms", "host ms", "neighbour list ms", "steps", "file"]
    return [_md_intro(d), ""] + table(header, _md_rows([(name, d)], gpu=True)) + sources((name, d))


def _featurize(name: str) -> list[str]:
    d = load(name)
    st = d.get("settings", {})
    rows = []
    for dtype, passes in d.get("results", {}).items():
        for what, r in passes.items():
            label = "descriptors" if what == "forward" else "descriptors and their position gradient"
            rows.append([dtype, label, f"**{num(r['us_per_atom'])}**", num(r.get("cpu_us_per_atom")),
                         f"{num(r['steady_s'])} s", f"{num(r['compile_s'])} s ({r.get('shapes')} shapes)"])
    intro = (f"`python benchmarks/featurize.py`: all {num(d['n_structures'])} TiO2 structures "
             f"({num(d['n_atoms'])} atoms), {st.get('n_functions')} symmetry functions (`{st.get('preset')}`), "
             f"{st.get('atoms_per_batch')} atoms per batch; reading {num(d['timings']['read_s'])} s, "
             f"neighbour lists {num(d['timings']['neighbor_list_s'])} s:")
    header = ["dtype", "what", "µs/atom", "CPU µs/atom", "steady", "compilation"]
    return [intro, ""] + table(header, rows) + sources((name, d))


def t_cpu_featurize() -> list[str]:
    return _featurize("featurize_cpu")


def t_gpu_featurize() -> list[str]:
    return _featurize("featurize_gpu")


def t_cpu_training() -> list[str]:
    rows, entries = [], []
    name = "ef_committee_cpu"
    d = load(name)
    entries.append((name, d))
    st, ep = d["settings"], d["epochs"]
    jacobians = "read from the cache" if d.get("cache_hit") else "computed"
    other = (f"Jacobians {jacobians} in {num(d['jacobian_s'])} s, {num(d['train_gb'])} + {num(d['val_gb'])} GB; "
             f"validation {num(ep['val_s'])} s/epoch; peak RSS {num(d['peak_rss_mb'] / 1024)} GiB")
    what = f"E+F committee on cached descriptor Jacobians (`ef_committee.py`), {st['members']} members {st['hidden']}"
    rows.append([what,
                 f"{num(d['train_structures'])} structures ({num(d['train_atoms'])} atoms)",
                 f"**{num(ep['steady_s'])} s/epoch** ({num(ep['steady_us_per_atom_member'])} µs per atom and member)",
                 f"{num(ep['first_s'])} s", other])
    header = ["training", "data", "steady", "first epoch / iteration (with compilation)", "other"]
    return table(header, rows) + sources(*entries)


def t_lammps_export() -> list[str]:
    name = "lammps_export_cpu"
    d = load(name)
    rows = [[num(r["n_atoms"]), num(r["n_ghosts"]), r["precision"], f"**{num(r['us_per_atom'])}**",
             num(r["calculator_us_per_atom"]), f"{num(r['abs_energy_error_ev'], 2)} eV",
             f"{num(r['max_abs_force_error_ev_a'], 2)} eV/Å", f"{num(r['compile_s'])} s"] for r in d["rows"]]
    header = ["atoms", "ghosts", "precision", "exported program µs/atom", "calculator µs/atom (with stress)",
              "energy difference", "largest force difference", "compilation"]
    intro = ("`python benchmarks/lammps_export.py`: the exported lammps-jax program (energy and forces) run in "
             "process on LAMMPS's layout, rutile, against `BPNNCalculator` in the same run:")
    return [intro, ""] + table(header, rows) + sources((name, d))


def t_n2p2() -> list[str]:
    name = "n2p2_vs_bpnn_cpu"
    d = load(name)
    cols = [("n2p2 in LAMMPS", 1), ("n2p2 in LAMMPS", 2), ("bpnn_jax BPNNCalculator float32", None),
            ("bpnn_jax BPNNCalculator float64", None)]
    cells: dict = {}
    for r in d["rows"]:
        key = (r["members"], r["n_atoms"])
        col = (r["code"], r.get("ranks") if r["code"].startswith("n2p2") else None)
        cells.setdefault(key, {})[col] = "not run" if r.get("skipped") else num(r["us_per_atom_step"])
    rows = [[f"member{'s' if '-' in m or ',' in m else ''} {m}", num(n)] + [cells[(m, n)].get(c, "—") for c in cols]
            for (m, n) in cells]
    header = ["model", "atoms", "n2p2, 1 rank", "n2p2, 2 ranks", "calculator float32", "calculator float64"]
    loads = [float(x.split(",")[0]) for r in d["rows"] for x in (r.get("load_before"), r.get("load_after")) if x]
    intro = (f"`python benchmarks/lammps/timing.py`: `tio2`'s members with its pair baseline in n2p2 "
             f"(LAMMPS `pair_style hdnnp`) and in `BPNNCalculator`, rutile, µs/atom/step "
             f"(1-minute load average {min(loads):.1f}–{max(loads):.1f} during the rows):")
    return [intro, ""] + table(header, rows) + sources((name, d))


def t_mlearn() -> list[str]:
    name = "mlearn_cpu"
    d = load(name)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from mlearn import PUBLISHED, TARGET
    finally:
        sys.path.pop(0)
    rows = []
    for r in d.get("elements", []):
        el = r["element"]
        pub = PUBLISHED.get(el, {})
        gap, mtp = pub.get("GAP", (None, None)), pub.get("MTP", (None, None))
        tgt = TARGET.get(el, (None, None))
        rows.append([el, f"**{r['energy_mae_mev_atom']:.2f}** ({r['energy_rmse_mev_atom']:.2f})",
                     f"**{r['force_mae_ev_a']:.4f}** ({r['force_rmse_ev_a']:.4f})", minutes(r.get("train_seconds")),
                     f"{num(gap[0])} / {num(gap[1])}", f"{num(mtp[0])} / {num(mtp[1])}",
                     f"{num(tgt[0])} / {num(tgt[1])}"])
    intro = (f"`{d.get('command', 'python benchmarks/mlearn.py')}`: `train X_train.extxyz` with no options, then "
             "`evaluate` on X_test; test-set MAE (RMSE), energy meV/atom, forces eV/Å; training time is the whole "
             "`train` process; GAP and MTP from Zuo et al., J. Phys. Chem. A 124, 731 (2020):")
    header = ["element", "energy", "forces", "train time", "GAP E / F", "MTP E / F", "target E / F"]
    return [intro, ""] + table(header, rows) + sources((name, d))


#: Block name -> table builder.
TABLES = {
    "cpu-suite": t_cpu_suite,
    "cpu-md": t_cpu_md,
    "cpu-featurize": t_cpu_featurize,
    "cpu-training": t_cpu_training,
    "lammps-export": t_lammps_export,
    "n2p2": t_n2p2,
    "mlearn": t_mlearn,
    "gpu-featurize": t_gpu_featurize,
    "gpu-md": t_gpu_md,
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten; an unknown block name is an error."""
    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in TABLES:
            raise SystemExit(f"docs/performance.md: unknown generated block {name!r} (known: {', '.join(TABLES)})")
        return m["begin"] + "\n".join(TABLES[name]()) + "\n" + m["end"]

    return BLOCK.sub(one, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 (with a diff) if the document is out of date")
    ap.add_argument("--doc", default=str(DOC), help="the document (default docs/performance.md)")
    args = ap.parse_args(argv)
    path = Path(args.doc)
    old = path.read_text()
    found = [m["name"] for m in BLOCK.finditer(old)]
    missing = sorted(set(TABLES) - set(found))
    if missing:
        print(f"{path}: no block for {', '.join(missing)} (add {BEGIN.format(name='NAME')} ... "
              f"{END.format(name='NAME')})", file=sys.stderr)
    new = render(old)
    if args.check:
        if new != old or missing:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                       str(path), "regenerated"))
            print(f"{path} is out of date: run python benchmarks/make_performance_doc.py", file=sys.stderr)
            return 1
        print(f"{path}: {len(found)} generated tables up to date")
        return 0
    if new != old:
        path.write_text(new)
        print(f"{path}: {len(found)} generated tables rewritten")
    else:
        print(f"{path}: {len(found)} generated tables already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
