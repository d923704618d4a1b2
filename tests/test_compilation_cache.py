"""The persistent XLA compilation cache: a second process compiles (and traces) nothing.

Counted, not timed: JAX's monitoring events ``cache_hits`` and
``cache_misses`` of a featurisation plus an evaluation of the shipped model,
run twice in fresh processes against one cache directory
(``BPNN_COMPILATION_CACHE``).  Two 6-atom structures: adding a 24-atom one
(another padded shape) cost the first process ~15 s more of compilation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, sys
from collections import Counter
import jax
counts = Counter()
jax.monitoring.register_event_listener(lambda name, **kw: counts.update([name]))
import bpnn_jax
from bpnn_jax.descriptors import SymmetryFunctionSet
from bpnn_jax.descriptors.featurize import featurize
from bpnn_jax.io import read_xsf
from bpnn_jax.model import load_model
from bpnn_jax.descriptors.batch import prepare_structures
from bpnn_jax.training import predict_structures
with_model = sys.argv[1] == "model"
atoms = [read_xsf(p) for p in sys.argv[2:]]
featurize(atoms, SymmetryFunctionSet.artrith_urban(("O", "Ti")))
if with_model:
    model = load_model("tio2")
    predict_structures(model, prepare_structures(atoms, model.elements, model.spec.cutoff))
from bpnn_jax.descriptors.programs import STATS
print(json.dumps({"dir": bpnn_jax.compilation_cache_dir(),
                  "hits": counts["/jax/compilation_cache/cache_hits"],
                  "misses": counts["/jax/compilation_cache/cache_misses"], **STATS}))
"""


def _run(files, cache: Path, *, model: bool = True, **env) -> dict:
    """Featurise ``files`` (and with ``model``, evaluate them with ``tio2``) in a fresh process."""
    environ = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    environ.update({"BPNN_COMPILATION_CACHE": str(cache), **env})
    out = subprocess.run([sys.executable, "-c", SCRIPT, "model" if model else "featurize", *map(str, files)],
                         env=environ, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_every_program_from_the_cache(small_files, tmp_path):
    files = small_files[1:3]  # 6 atoms each
    cache = tmp_path / "xla"
    first = _run(files, cache)
    assert first["dir"] == str(cache)
    assert first["misses"] > 0
    assert any(cache.iterdir())
    second = _run(files, cache)
    assert second["misses"] == 0, second
    assert second["hits"] >= first["misses"]
    # Nor traces anything: the featurisation and the model's potential programs are loaded
    # (bpnn_jax.descriptors.programs).
    assert first["traced"] >= 2 and second["traced"] == 0 and second["loaded"] == first["traced"], second


def test_cache_can_be_switched_off(small_files, tmp_path):
    # The featurisation compiles programs that the cache would keep (it does in the test above).
    res = _run(small_files[:1], tmp_path / "unused", model=False, BPNN_COMPILATION_CACHE="0")
    assert res["dir"] is None and res["hits"] == 0
    assert not (tmp_path / "unused").exists()
