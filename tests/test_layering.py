"""The package's layering, read from its import statements (no imports executed).

* The descriptor layer (units, errors, cut-offs, geometry, symmetry functions, Chebyshev basis) imports
  neither Keras nor ASE nor any upper layer of the package: it is pure JAX/NumPy.
* ``bpnn_jax/io.py`` imports no JAX or Keras (test_io.py).
* No module imports another module's private (underscore) names.
* Nothing in the package imports ``experiments`` (a folder of scripts that use the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bpnn_jax"

#: The pure layer and the third-party packages it may use.
DESCRIPTOR_LAYER = {"units", "errors", "cutoffs", "geometry", "chebyshev", "descriptors"}
DESCRIPTOR_LAYER_MAY_IMPORT = {"__future__", "dataclasses", "functools", "math", "typing", "json", "pathlib",
                               "collections", "jax", "numpy", "yaml"}


def _imports(path: Path):
    """(package modules imported by name, top-level third-party names, private names imported)."""
    tree = ast.parse(path.read_text())
    inner, outer, private = set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            module = (node.module or "").split(".")[0]
            names = [a.name for a in node.names]
            inner.update([module] if module else names)
            private += [f"{node.module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            outer.add(node.module.split(".")[0])
            if node.module.startswith("bpnn_jax"):
                private += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                            and not a.name.startswith("__")]
        elif isinstance(node, ast.Import):
            outer.update(a.name.split(".")[0] for a in node.names)
    return inner, outer, private


def test_descriptor_layer_is_pure_jax():
    for name in sorted(DESCRIPTOR_LAYER):
        inner, outer, _ = _imports(PACKAGE / f"{name}.py")
        assert inner <= DESCRIPTOR_LAYER, f"{name}.py imports {sorted(inner - DESCRIPTOR_LAYER)} (an upper layer)"
        assert outer <= DESCRIPTOR_LAYER_MAY_IMPORT, f"{name}.py imports {sorted(outer - DESCRIPTOR_LAYER_MAY_IMPORT)}"


def test_no_module_imports_private_names_or_experiments():
    for path in sorted(PACKAGE.rglob("*.py")):
        _, outer, private = _imports(path)
        assert not private, f"{path.relative_to(PACKAGE.parent)} imports private names {private}"
        assert "experiments" not in outer, f"{path.relative_to(PACKAGE.parent)} imports experiments"
