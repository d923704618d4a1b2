"""Traced programs kept across processes: a second ``featurize`` traces nothing and gives the same bits.

Counted, not timed: :data:`bpnn_jax.descriptors.programs.STATS` of whole
``featurize`` commands run in fresh processes against one cache directory
(``BPNN_COMPILATION_CACHE``).  Two 6-atom structures of the bundled sample
(one padded shape, one program) keep the first tier fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bpnn_jax.descriptors import programs

SCRIPT = r"""
import json, sys
from bpnn_jax.cli import main
from bpnn_jax.descriptors.programs import STATS
code = main(sys.argv[1:])
print(json.dumps({"code": code, **STATS, "modules": sorted({m.split(".")[0] for m in sys.modules}
                                                           & {"keras", "optax", "flax"})}))
"""


def _featurize(files, out: Path, cache: Path, **env) -> dict:
    """``featurize files --out out`` in a fresh process; its counts of programs traced and loaded."""
    environ = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "BPNN_EXPORTED_PROGRAMS")}
    environ.update({"BPNN_COMPILATION_CACHE": str(cache), **env})
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "featurize", *map(str, files), "--out", str(out)],
                          env=environ, check=True, capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["code"] == 0, proc.stderr
    return res


def _sf(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["sf"]


def test_second_process_traces_nothing_and_damaged_files_are_traced_again(small_files, tmp_path):
    files, cache = small_files[1:3], tmp_path / "xla"
    first = _featurize(files, tmp_path / "a.npz", cache)
    n = first["traced"]
    assert n >= 1 and first["loaded"] == 0 and first["unsaved"] == 0, first
    assert first["modules"] == [], "featurize imports Keras, optax or flax"
    saved = sorted((cache / "bpnn_exported").glob("*.jaxexp"))
    assert len(saved) == n
    second = _featurize(files, tmp_path / "b.npz", cache)
    assert second["traced"] == 0 and second["loaded"] == n and second["rejected"] == 0, second

    # A flipped byte of a program (its checksum no longer matches) ...
    path = saved[0]
    blob = path.read_bytes()
    path.write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
    damaged = _featurize(files, tmp_path / "c.npz", cache)
    assert damaged["rejected"] == 1 and damaged["traced"] == 1 and damaged["loaded"] == n - 1, damaged
    # ... and garbage with a valid checksum (what a program of another jax.export version would be to it).
    garbage = b"not a program" * 10
    path.write_bytes(blob[: len(programs._MAGIC) + 32] + hashlib.sha256(garbage).digest() + garbage)
    rejected = _featurize(files, tmp_path / "d.npz", cache)
    assert rejected["rejected"] == 1 and rejected["traced"] == 1, rejected
    repaired = _featurize(files, tmp_path / "e.npz", cache)  # the fallback wrote the file again
    assert repaired["loaded"] == n and repaired["traced"] == 0, repaired
    # The same bits every time (every process runs the same exported programs).
    for name in "bcde":
        assert np.array_equal(_sf(tmp_path / "a.npz"), _sf(tmp_path / f"{name}.npz"))


def test_exported_programs_can_be_switched_off(small_files, tmp_path):
    cache = tmp_path / "xla"
    res = _featurize(small_files[1:2], tmp_path / "a.npz", cache, BPNN_EXPORTED_PROGRAMS="0")
    assert res["traced"] == 0 and res["loaded"] == 0, res
    assert not (cache / "bpnn_exported").exists()


def test_persistent_jit_in_one_process(tmp_path, monkeypatch):
    """Traced once per signature and configuration, loaded by a new wrapper, plain jit under transformations."""
    import jax
    import jax.numpy as jnp

    monkeypatch.setattr(programs, "program_dir", lambda: tmp_path)

    def fn(x, y):
        return {"s": jnp.sin(x) * y}

    x, y = np.linspace(0.0, 1.0, 5), np.full(5, 2.0)
    count = dict(programs.STATS)
    f = programs.persistent_jit(fn, "test_fn", "v1")
    out = f(x, y)
    assert programs.STATS["traced"] == count["traced"] + 1 and len(list(tmp_path.glob("test_fn-*.jaxexp"))) == 1
    assert np.array_equal(out["s"], jax.jit(fn)(x, y)["s"])
    f(x + 1.0, y)  # same signature: the same program
    assert programs.STATS["traced"] == count["traced"] + 1
    # Under grad (tracers) and with Python scalars: the plain jit, nothing exported.
    np.testing.assert_allclose(jax.grad(lambda x: f(x, y)["s"].sum())(x), 2.0 * np.cos(x), rtol=1e-12)
    assert np.allclose(f(x, 2.0)["s"], 2.0 * np.sin(x))
    assert programs.STATS["traced"] == count["traced"] + 1
    # A new wrapper (what a new process makes) loads the file; another configuration is another program.
    assert np.array_equal(programs.persistent_jit(fn, "test_fn", "v1")(x, y)["s"], out["s"])
    assert programs.STATS["loaded"] == count["loaded"] + 1
    programs.persistent_jit(fn, "test_fn", "v2")(x, y)
    assert programs.STATS["traced"] == count["traced"] + 2
