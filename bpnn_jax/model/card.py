"""Model cards of the shipped models: one schema, read and checked here.

Every shipped model ``bpnn_jax/pretrained/NAME.keras`` has a card
``NAME.json`` beside it::

    card_version    1
    name            shipped name (= the file stem)
    summary         one paragraph: what the model is
    elements        element symbols the model covers
    members         committee size (0 for a single network)
    descriptors     descriptor set(s) in words (kind, cut-off in Å, count)
    repulsion       the short-range pair baseline ({cutoffs_a, powers, ...}) or null
    data            {source, structures, excluded, split, trained_on}: where
                    the structures come from and which of them trained it
    recipe          {command, files}: the exact command, and every recipe
                    file it reads with its SHA-256 (a recipe that produced a
                    shipped model is never edited: a new model gets new files)
    validation      metrics on structures the model never trained on
    test            metrics on the held-out test split, or {"none": why}
    uncertainty_threshold_ev_atom   committee-spread threshold (eV/atom)
    training        {device, time, date}
    details         anything else (parts, comparisons, phases), free form

Metrics hold ``n_structures``, ``energy_mae_mev_atom``,
``energy_rmse_mev_atom`` (meV/atom), ``force_mae_ev_a`` and
``force_rmse_ev_a`` (eV/Å).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ModelError

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent

CARD_VERSION = 1
#: Top-level fields of a card and their JSON types.
CARD_FIELDS = {
    "card_version": int, "name": str, "summary": str, "elements": list, "members": int, "descriptors": str,
    "repulsion": (dict, type(None)), "data": dict, "recipe": dict, "validation": dict, "test": dict,
    "uncertainty_threshold_ev_atom": (float, type(None)), "training": dict, "details": dict,
}
DATA_FIELDS = ("source", "structures", "excluded", "split", "trained_on")
RECIPE_FIELDS = ("command", "files")
TRAINING_FIELDS = ("device", "time", "date")
METRIC_FIELDS = ("n_structures", "energy_mae_mev_atom", "energy_rmse_mev_atom", "force_mae_ev_a", "force_rmse_ev_a")


def shipped_models() -> list[str]:
    """Names of the shipped models (``load_model(name)`` loads each)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.keras"))


def read_card(name: str) -> dict:
    """The card of shipped model ``name``.

    Raises:
        ModelError: no such shipped model, or its card is missing or not JSON.
    """
    path = PRETRAINED_DIR / f"{name}.json"
    if not (PRETRAINED_DIR / f"{name}.keras").exists():
        raise ModelError(f"{name}: no shipped model of that name (shipped: {', '.join(shipped_models())})")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: model card missing or unreadable ({exc})") from None


def sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_metrics(where: str, metrics: dict) -> list[str]:
    missing = [k for k in METRIC_FIELDS if k not in metrics]
    problems = [f"{where}: missing {', '.join(missing)}"] if missing else []
    for k in METRIC_FIELDS[1:]:
        v = metrics.get(k)
        if k in metrics and not (isinstance(v, (int, float)) and v >= 0):
            problems.append(f"{where}.{k}: {v!r} is not a non-negative number")
    return problems


def check_card(card: dict, root: Path = REPO_ROOT) -> list[str]:
    """Problems with a card against the schema of the module doc (empty when it is valid).

    Recipe files are looked up under ``root`` (the repository) and their
    SHA-256 compared with the card's.
    """
    problems = []
    for key, kind in CARD_FIELDS.items():
        if key not in card:
            problems.append(f"missing field {key!r}")
        elif not isinstance(card[key], kind) or (kind is int and isinstance(card[key], bool)):
            problems.append(f"{key}: {type(card[key]).__name__}, expected {kind}")
    if problems:
        return problems
    if card["card_version"] != CARD_VERSION:
        problems.append(f"card_version {card['card_version']}, this package reads {CARD_VERSION}")
    for key, fields in (("data", DATA_FIELDS), ("recipe", RECIPE_FIELDS), ("training", TRAINING_FIELDS)):
        missing = [f for f in fields if f not in card[key]]
        if missing:
            problems.append(f"{key}: missing {', '.join(missing)}")
    problems += _check_metrics("validation", card["validation"])
    if "none" not in card["test"]:
        problems += _check_metrics("test", card["test"])
    files = card["recipe"].get("files", {})
    if not isinstance(files, dict) or not files:
        problems.append("recipe.files: no recipe files with their SHA-256")
    else:
        for rel, digest in files.items():
            path = Path(root) / rel
            if not path.exists():
                problems.append(f"recipe file {rel} does not exist")
            elif sha256(path) != digest:
                problems.append(f"recipe file {rel} was edited after it produced this model (SHA-256 differs): "
                                f"restore it from git and put a new recipe in a new file")
    return problems
