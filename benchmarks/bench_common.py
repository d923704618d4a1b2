"""Shared pieces of the benchmark scripts: options, machine description, output.

Every benchmark script writes ``<out-dir>/<name>_<tag>.json`` and ``.md``;
the tag defaults to ``cpu`` or ``gpu`` after JAX's default backend.  The
machine block names the CPU model and core count, the JAX device (platform
and ``device_kind``) and the versions of Python, JAX, Keras and NumPy.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))

DEFAULT_OUT_DIR = REPO / "benchmarks" / "results"

# As importing bpnn_jax does; here too, so that importing Keras first is safe.
os.environ.setdefault("KERAS_BACKEND", "jax")


def default_data_dir() -> str:
    """``$BPNN_DATA_DIR``, else ``<repo>/../shared/data/tio2``."""
    return os.environ.get("BPNN_DATA_DIR") or str(REPO.parent / "shared" / "data" / "tio2")


def add_common_args(ap) -> None:
    """``--out-dir``, ``--data`` and ``--tag``."""
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR), help="where the JSON and markdown go "
                    "(default benchmarks/results)")
    ap.add_argument("--data", default=default_data_dir(),
                    help="XSF directory (default $BPNN_DATA_DIR or ../shared/data/tio2)")
    ap.add_argument("--tag", default=None, help="file-name suffix (default: 'cpu' or 'gpu' after the JAX platform)")
    ap.add_argument("--note", action="append", default=[], help="a note to add to the results (repeatable)")


def default_tag() -> str:
    import jax

    backend = jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def log(msg: str) -> None:
    """Progress line on stdout, flushed (for logs of unattended runs)."""
    print(f"[{_dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "unknown"))
    except Exception:  # optional module missing or broken
        return None


def cpu_simd() -> str:
    """The widest x86 vector extension the CPU reports (avx512f, avx2, ...), '' where unknown.

    The CPU name alone ("AMD EPYC" on this project's VMs) does not say which
    vector code XLA compiles for, and the same command has run ~2x slower on
    one such VM (AVX2 only) than the committed results of an earlier one.
    """
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return ""
    have = set(flags.split(":", 1)[1].split())
    return next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in have), "")


def memory_setup() -> str:
    """Transparent huge pages mode and a preloaded allocator: both change XLA's CPU allocation cost."""
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        thp = "unknown"
    preload = os.environ.get("LD_PRELOAD", "")
    alloc = next((a for a in ("tcmalloc", "jemalloc", "mimalloc") if a in preload), "glibc malloc")
    return f"THP {thp}, {alloc}"


def machine_info() -> dict:
    """Host CPU, the JAX device and library versions."""
    import jax

    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    devices = jax.devices()
    dev = devices[0]
    return {
        "cpu_model": cpu_model(),
        "cpu_simd": cpu_simd(),
        "memory_setup": memory_setup(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "memory_gb": mem_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "keras": _version("keras"),
        "numpy": _version("numpy"),
        "jax_platform": dev.platform,
        "device_kind": getattr(dev, "device_kind", ""),
        "device": str(dev),
        "device_count": len(devices),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def device_peak_memory_mb() -> float | None:
    """Peak memory in use on the first JAX device (GPU), MB; None where unknown."""
    try:
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else round(peak / 2**20, 1)
    except Exception:
        return None


def rss_peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def new_result(benchmark: str, args, dtype: str) -> dict:
    return {
        "benchmark": benchmark,
        "tag": args.tag,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "data_dir": str(args.data),
        "dtype": dtype,
        "machine": machine_info(),
        "errors": [],
        "notes": list(args.note),
    }


def record_error(res: dict, what: str, exc: BaseException) -> None:
    """Note a failed optional piece (the run goes on)."""
    msg = f"{what}: {type(exc).__name__}: {exc}"
    res.setdefault("errors", []).append(msg)
    log(f"FAILED {msg}")
    traceback.print_exc(file=sys.stdout)
    sys.stdout.flush()


def machine_line(res: dict) -> str:
    m = res["machine"]
    cores = m["cpu_cores"]
    if m["cpu_cores_usable"] != m["cpu_cores"]:
        cores = f"{m['cpu_cores_usable']} of {m['cpu_cores']}"
    simd = f" ({m['cpu_simd']})" if m.get("cpu_simd") else ""
    memory = f" · {m['memory_setup']}" if m.get("memory_setup") else ""
    return (
        f"Machine: {m['cpu_model']}{simd}, {cores} CPU cores, {m['memory_gb']} GB{memory} · device: `{m['device']}` "
        f"({m['jax_platform']}, {m['device_kind']}) · Python {m['python']}, JAX {m['jax']}, Keras {m['keras']}, "
        f"NumPy {m['numpy']} · dtype {res['dtype']} · load average at start {m['load_average_start']}"
    )


def footer(res: dict) -> list[str]:
    lines = []
    if res.get("errors"):
        lines += ["", "Parts that failed (the rest of the run went on):", ""] + [f"* {e}" for e in res["errors"]]
    if res.get("notes"):
        lines += ["", "Notes:", ""] + [f"* {n}" for n in res["notes"]]
    lines += ["", f"Command: `{res['command']}`"]
    return lines


def write_results(res: dict, out_dir, stem: str, markdown: str, *, update_load: bool = True) -> Path:
    """Write ``<out_dir>/<stem>.json`` and ``.md`` (each via a temporary file and a rename).

    ``update_load=False`` keeps the recorded end load average (re-rendering old results).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if update_load:
        res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    for suffix, text in ((".json", json.dumps(res, indent=2, default=_json_default) + "\n"), (".md", markdown)):
        path = out / f"{stem}{suffix}"
        tmp = out / f".{stem}{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    log(f"wrote {out / stem}.json and .md")
    return out / stem


def _json_default(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


def select_files(data_dir, subset: int | None) -> list:
    """The XSF files of ``data_dir``; with ``subset``, that many spread evenly over the sorted list."""
    import numpy as np

    from bpnn_jax.io import find_xsf_files

    files = find_xsf_files(data_dir)
    if subset is not None and 0 < subset < len(files):
        idx = np.unique(np.linspace(0, len(files) - 1, subset).round().astype(int))
        files = [files[i] for i in idx]
    return files


def fmt(x, digits: int = 3) -> str:
    """Number for a markdown cell: 3 significant digits, '—' for None."""
    if x is None:
        return "—"
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
