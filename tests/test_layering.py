"""The package's layering, read from its import statements (and, for what a layer loads, from a fresh interpreter).

* Layers, lowest first: the base modules (``errors``, ``units``, ``lazy``),
  then ``io`` < ``descriptors`` < ``model`` < ``training`` < ``calculators``
  < ``cli``.  A module imports from its own layer and the layers below it,
  never from one above (imports inside functions included).
* ``descriptors`` imports neither Keras nor ASE (the neighbour search's
  Minkowski reduction of very skewed cells, :data:`DESCRIPTORS_MAY_IMPORT_LAZILY`,
  is the one lazy exception); its numerical core (symmetry functions,
  Chebyshev basis, cut-offs, geometry) is pure JAX/NumPy; importing any
  descriptors module loads neither Keras nor ASE.
* ``io`` imports no JAX or Keras.
* No module imports another module's private (underscore) names, nor reads
  them off an imported module.
* Nothing in the package imports ``experiments`` (a folder of scripts that use the package).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bpnn_jax"

#: The layers, lowest first; the base modules (errors, units, lazy) sit below all of them.
LAYERS = ("io", "descriptors", "model", "training", "calculators", "cli")
BASE = {"errors", "units", "lazy"}

#: The numerical core of the descriptors and the third-party packages it may use.
DESCRIPTOR_CORE = {"symmetry", "chebyshev", "cutoffs", "geometry"}
DESCRIPTOR_CORE_MAY_IMPORT = {"__future__", "dataclasses", "functools", "math", "typing", "json", "pathlib",
                              "collections", "jax", "numpy", "yaml"}
#: (descriptors module, package) imported inside a function, on a rare path only.
DESCRIPTORS_MAY_IMPORT_LAZILY = {("neighbors", "ase")}  # ase.geometry.minkowski_reduce, for very skewed cells

HEAVY = {"jax", "keras", "flax", "optax", "tensorflow", "torch"}


def _module_parts(path: Path) -> list[str]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_module(parts: list[str]) -> bool:
    base = PACKAGE.parent.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path):
    """What a module imports, from its import statements (anywhere in the file).

    Returns ``(inner, outer, private)``: the package modules imported (as
    dotted names, each with ``True`` when the import is at module level),
    the third-party top-level packages (same form), and the private names
    imported from or read off package modules.
    """
    tree = ast.parse(path.read_text())
    here = _module_parts(path)
    package = here if path.name == "__init__.py" else here[:-1]
    top_level = {id(node) for node in tree.body}
    inner, outer, private = [], [], []
    module_aliases = set()
    for node in ast.walk(tree):
        at_top = id(node) in top_level
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                base = node.module.split(".")
            if base[0] != "bpnn_jax":
                outer.append((base[0], at_top))
                continue
            for alias in node.names:
                if _is_module(base + [alias.name]):  # ``from . import jacobian as jt``: a module
                    inner.append((".".join(base + [alias.name]), at_top))
                    module_aliases.add(alias.asname or alias.name)
                else:
                    inner.append((".".join(base), at_top))
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{'.'.join(base)}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bpnn_jax":
                    inner.append((alias.name, at_top))
                    module_aliases.add(alias.asname or alias.name.split(".")[0])
                else:
                    outer.append((alias.name.split(".")[0], at_top))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            private.append(f"{node.value.id}.{node.attr}")
    return inner, outer, private


def _layer(dotted: str) -> int:
    """Rank of a package module's layer: -1 for the base modules and the package root."""
    parts = dotted.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def _package_modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    for path in _package_modules():
        parts = _module_parts(path)
        if len(parts) == 1 or path.name == "__main__.py":
            continue  # the package root and ``python -m bpnn_jax``
        assert parts[1] in LAYERS or parts[1] in BASE, f"{path.relative_to(PACKAGE.parent)} is in no layer"


def test_no_layer_imports_an_upper_one():
    for path in _package_modules():
        parts = _module_parts(path)
        if len(parts) == 1 or path.name == "__main__.py":
            continue
        own = _layer(".".join(parts))
        inner, _, _ = _imports(path)
        upper = sorted({name for name, _ in inner if _layer(name) > own})
        assert not upper, f"{path.relative_to(PACKAGE.parent)} (layer {parts[1]}) imports upper layers: {upper}"
        if own == -1:  # a base module: only other base modules
            others = sorted({name for name, _ in inner if name == "bpnn_jax" or name.split(".")[1] not in BASE})
            assert not others, f"{path.relative_to(PACKAGE.parent)} (base) imports {others}"


def test_descriptors_import_neither_keras_nor_ase():
    for path in sorted((PACKAGE / "descriptors").glob("*.py")):
        _, outer, _ = _imports(path)
        for name, at_top in outer:
            assert name != "keras", f"{path.name} imports keras"
            if name == "ase":
                assert not at_top and (path.stem, name) in DESCRIPTORS_MAY_IMPORT_LAZILY, f"{path.name} imports ase"
        if path.stem in DESCRIPTOR_CORE:
            inner, _, _ = _imports(path)
            names = {name for name, _ in outer}
            assert names <= DESCRIPTOR_CORE_MAY_IMPORT, f"{path.name} imports {sorted(names - DESCRIPTOR_CORE_MAY_IMPORT)}"
            io = sorted({name for name, _ in inner if _layer(name) == LAYERS.index("io")})
            assert not io, f"{path.name} (the pure core) imports {io}"


def test_io_imports_no_jax_or_keras():
    for path in sorted((PACKAGE / "io").glob("*.py")):
        _, outer, _ = _imports(path)
        heavy = sorted({name for name, _ in outer} & HEAVY)
        assert not heavy, f"io/{path.name} imports {heavy}"


def test_importing_descriptors_loads_neither_keras_nor_ase():
    modules = ["bpnn_jax.descriptors"] + [f"bpnn_jax.descriptors.{p.stem}" for p in
                                          sorted((PACKAGE / "descriptors").glob("*.py")) if p.stem != "__init__"]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'ase'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent, check=True).stdout
    assert out.strip() == "[]", f"importing the descriptors loads {out.strip()}"


def test_no_module_imports_private_names_or_experiments():
    for path in _package_modules():
        _, outer, private = _imports(path)
        assert not private, f"{path.relative_to(PACKAGE.parent)} imports private names {private}"
        assert "experiments" not in {name for name, _ in outer}, f"{path.relative_to(PACKAGE.parent)} imports experiments"
