"""``train``: train a potential (``--tune``: search the set-up first).

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse
import dataclasses

from .common import parse_reference


def _hidden(text: str) -> tuple[int, ...]:
    try:
        nodes = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        nodes = ()
    if not nodes or any(n <= 0 for n in nodes):
        raise argparse.ArgumentTypeError(f"expected nodes per layer like 64,64 , got {text!r}")
    return nodes


def _weights(text: str):
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected a weight >= 0 or comma-separated weights, got {text!r}")
    return values[0] if len(values) == 1 else values


def _pair_cutoffs(text: str) -> dict:
    """``"Ti-Ti:2.0,Ti-O:1.6"`` -> ``{"Ti-Ti": 2.0, "Ti-O": 1.6}`` (Å)."""
    out = {}
    for item in (x.strip() for x in text.split(",")):
        key, sep, value = item.partition(":")
        try:
            rc = float(value)
        except ValueError:
            rc = float("nan")
        if not sep or key.count("-") != 1 or not rc > 0:
            raise argparse.ArgumentTypeError(f"expected A-B:RC[,A-B:RC...] with RC > 0 in Å, got {item!r}")
        out[key.strip()] = rc
    return out


# ------------------------------------------------------------------- train
def add_train_parser(subparsers) -> argparse.ArgumentParser:
    from ..training import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train a potential on structure files (a committee on energies and forces)",
        usage="%(prog)s DATA [DATA ...] --out RUN_DIR [options]   (or --config FILE.yaml, or --out RUN_DIR --resume)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a committee of Behler-Parrinello networks on energies and forces (and stress when the data\n"
            "have it). Options that are not given are derived from the data (cut-off, descriptors, network\n"
            "size, epochs, force weights, split): train prints each choice with its reason and writes them to\n"
            "RUN_DIR/config.yaml, which `train --config` repeats. --resume continues an interrupted run.\n\n"
            "  python -m bpnn_jax train data.extxyz --out runs/mine\n"
            "  python -m bpnn_jax evaluate runs/mine/model.keras test.extxyz"
        ),
    )
    g = p.add_argument_group("inputs and output")
    g.add_argument("paths", nargs="*", metavar="DATA",
                   help="structure files or directories: extended XYZ or any ASE format with energies (and "
                        "forces), or XSF (or 'data' in --config)")
    g.add_argument("--out", default=None, metavar="RUN_DIR", help="run directory (or 'out' in --config)")
    g.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="options from a YAML/JSON file (keys: option names, 'data', 'out'); flags override it; "
                        "RUN_DIR/config.yaml repeats a run")
    g.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR with its saved options (of the flags only --time-limit, "
                        "--ef-lbfgs-steps and --data-parallel apply)")
    g.add_argument("--time-limit", type=float, default=None, dest="time_limit_minutes", metavar="MINUTES",
                   help="stop after the epoch that crosses this wall time; --resume continues")
    g.add_argument("--quiet", action="store_true", help="about ten progress lines instead of one per epoch")
    g.add_argument("--reference", action="append", default=None, metavar="EL=EV", type=parse_reference,
                   help="free-atom energy of an element, eV (repeatable); default: aenet's for O and Ti, the "
                        "others fitted by least squares")
    g.add_argument("--references", default=None, metavar="FILE", help="YAML/JSON mapping element -> eV")
    g.add_argument("--fit-references", action="store_true", help="fit every element's reference energy")
    g.add_argument("--max-energy", type=float, default=None, metavar="EV",
                   help=f"leave out structures with cohesive energy above this, eV/atom (default {d.max_energy})")
    g.add_argument("--keep-all", action="store_true", help="keep every structure, whatever its energy")
    g.add_argument("--val-fraction", type=float, default=None,
                   help=f"validation fraction (default {d.val_fraction})")
    g.add_argument("--test-fraction", type=float, default=None,
                   help="test fraction (default: 0 under 1 000 structures, else 0.1)")
    g.add_argument("--train-on-test", action="store_true", default=None,
                   help="train on the test split too (a final refit; evaluate --split ...:test then refuses)")
    g.add_argument("--seed", type=int, default=None, help=f"split and initialisation seed (default {d.seed})")
    g.add_argument("--energy-key", default=None, metavar="KEY", help="info key of the energy, eV")
    g.add_argument("--forces-key", default=None, metavar="KEY", help="arrays key of the forces, eV/Å")
    g.add_argument("--stress-key", default=None, metavar="KEY",
                   help="info key of the stress, eV/Å³ (a key containing 'virial' is read as a virial, eV)")

    g = p.add_argument_group("model (default: derived from the data)")
    g.add_argument("--descriptors", default=None, metavar="NAME|FILE",
                   help="dense (default), imbalzano, artrith-urban (TiO2, exact against aenet), chebyshev, "
                        "or a JSON/YAML parameter file")
    g.add_argument("--cutoff", type=float, default=None,
                   help="cut-off of the dense/imbalzano sets, Å (default: from the neighbour shells)")
    g.add_argument("--members", type=_members, default=None,
                   help="committee size (default 5; 1: one network)")
    g.add_argument("--hidden", type=_hidden, default=None, help="nodes per hidden layer, e.g. 64,64")
    g.add_argument("--activation", default=None,
                   help=f"hidden activation (default: silu, derived; {d.activation} with --preset seed)")
    g.add_argument("--repulsion", type=_pair_cutoffs, default=None, metavar="A-B:RC,...",
                   help="a short-range repulsive pair baseline, zero beyond RC (Å) per pair, fitted first "
                        "(e.g. Ti-Ti:2.4,Ti-O:1.8,O-O:2.2)")
    g.add_argument("--repulsion-from", default=None, metavar="MODEL",
                   help="use MODEL's fitted pair baseline (to merge with MODEL later)")
    g.add_argument("--repulsion-force-weight", type=float, default=None,
                   help=f"force weight of that fit (default {d.repulsion_force_weight})")

    g = p.add_argument_group("hyper-parameter search")
    g.add_argument("--tune", action="store_true",
                   help="search cut-off, descriptors, depth, width, force weights, learning rate and weight decay "
                        "around the derived set-up (KerasTuner; RUN_DIR/tune/), then train the best; the same "
                        "command resumes a killed search")
    g.add_argument("--budget", type=float, default=60.0, metavar="MINUTES",
                   help="wall time of --tune, search and final training together (default 60)")
    g.add_argument("--tune-trials", type=int, default=50, metavar="N", help="most trials (default 50)")

    g = p.add_argument_group("committee training (default: derived from the data)")
    g.add_argument("--ef-epochs", type=int, default=None, help="Adam epochs")
    g.add_argument("--ef-force-weight", type=_weights, default=None,
                   help="force weight λ, eV²/Å² per eV²/atom²; K comma-separated values give each member "
                        "its own (default: 0.02 ... 0.09)")
    g.add_argument("--stress-weight", type=float, default=None,
                   help="stress weight, per GPa² (default: 1e-4 when the data have stresses, else 0)")
    g.add_argument("--ef-lr", type=float, default=None, dest="ef_learning_rate", help="peak learning rate")
    g.add_argument("--ef-final-lr", type=float, default=None, dest="ef_final_learning_rate",
                   help=f"learning rate at the end of the cosine decay (default {d.ef_final_learning_rate})")
    g.add_argument("--ef-warmup-epochs", type=int, default=None, help=f"warm-up epochs (default {d.ef_warmup_epochs})")
    g.add_argument("--ef-final-epochs", type=int, default=None,
                   help="the last N epochs weigh forces by --ef-final-force-factor")
    g.add_argument("--ef-final-force-factor", type=float, default=None, help="e.g. 0.1: energies weigh more")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay of the kernels")
    g.add_argument("--ema-decay", type=float, default=None, help=f"weight average per step (default {d.ema_decay})")
    g.add_argument("--ef-atoms-per-batch", type=int, default=None, help="padded atoms per mini-batch")
    g.add_argument("--bootstrap", action="store_true", help="Poisson-bootstrap the structures per member")
    g.add_argument("--member-seed", type=int, default=None,
                   help="members' initialisation seed on the split of --seed (another committee to merge)")
    g.add_argument("--ef-lbfgs-steps", type=int, default=None,
                   help=f"full-batch L-BFGS polish after Adam (default {d.ef_lbfgs_steps})")
    g.add_argument("--patience", type=int, default=None, help=f"early-stopping patience, epochs (default {d.patience})")
    g.add_argument("--energy-loss", choices=["mse", "mae", "huber"], default=None,
                   help=f"penalty of the per-atom energy error (default {d.energy_loss})")
    g.add_argument("--force-loss", choices=["mse", "huber"], default=None,
                   help=f"penalty of the force components' errors (default {d.force_loss})")
    g.add_argument("--huber-delta", type=float, default=None,
                   help=f"where the Huber force penalty turns linear, eV/Å (default {d.huber_delta})")
    g.add_argument("--energy-huber-delta", type=float, default=None,
                   help=f"where the Huber energy penalty turns linear, eV/atom (default {d.energy_huber_delta})")

    g = p.add_argument_group("set-up")
    g.add_argument("--preset", choices=["default", "seed"], default="default",
                   help="'seed': the original study on the committee trainer (one network, energies only, MAE, "
                        "5x64, constant lr 1e-4, ~20 structures per batch, 80 epochs)")
    g.add_argument("--init", default=None, dest="init_model", metavar="MODEL",
                   help="fine-tune MODEL (.keras or shipped name): its committee, descriptors, references and "
                        "baseline, trained further on DATA")
    g.add_argument("--dropout", type=float, default=None,
                   help=f"dropout rate of the hidden layers while training (default {d.dropout})")
    g.add_argument("--data-parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="split each mini-batch across every local device (several GPUs; on a CPU no faster); "
                        "--resume may turn it on or off")
    g.add_argument("--batch-size", type=int, default=None,
                   help="about this many structures per mini-batch (sets --ef-atoms-per-batch from the data's "
                        "mean padded structure size)")
    for flag, replacement in REMOVED_FLAGS.items():
        g.add_argument(flag, nargs="?", action=_Removed, replacement=replacement, help=argparse.SUPPRESS)
    hide_advanced_options(p, TRAIN_COMMON)
    return p


#: Options of the Keras stages that the committee trainer replaced, and what to use instead.
REMOVED_FLAGS = {
    "--energy-epochs": "--ef-epochs (with --ef-force-weight 0 for energies only)",
    "--force-epochs": "--ef-epochs",
    "--lbfgs-steps": "--ef-lbfgs-steps",
    "--lbfgs-force-weight": "--ef-force-weight",
    "--force-weight": "--ef-force-weight",
    "--force-subset": "--ef-epochs (every epoch visits every training structure)",
    "--lr": "--ef-lr",
    "--atoms-per-batch": "--ef-atoms-per-batch (or --batch-size for structures per batch)",
}


class _Removed(argparse.Action):
    """An option of the removed Keras stages: stop with the one that replaced it."""

    def __init__(self, option_strings, dest, replacement="", **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} was an option of the removed Keras training stages; use {self.replacement}")


def _members(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k == 0:
        raise argparse.ArgumentTypeError("0 (the single-network Keras stages) is gone: use --members 1 for one "
                                         "network on the committee trainer")
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a committee size >= 1, got {text!r}")
    return k


#: The options ``train --help`` shows; ``--help-all`` shows every option.
TRAIN_COMMON = frozenset({
    "paths", "out", "config", "resume", "time_limit_minutes", "quiet", "reference", "test_fraction", "energy_key",
    "forces_key", "descriptors", "cutoff", "members", "hidden", "activation", "repulsion", "tune", "budget",
    "ef_epochs", "ef_force_weight", "stress_weight", "init_model",
})


class _HelpAll(argparse.Action):
    """``--help-all``: the help with every option, then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        for action in parser._actions:
            action.help = getattr(action, "full_help", action.help)
        parser.print_help()
        parser.exit()


def hide_advanced_options(parser: argparse.ArgumentParser, common) -> None:
    """Show only the ``common`` options (by dest) in ``--help``; add ``--help-all`` for the rest."""
    hidden = 0
    for action in parser._actions:
        if action.dest in common or action.dest == "help" or action.help == argparse.SUPPRESS:
            continue
        action.full_help, action.help = action.help, argparse.SUPPRESS
        hidden += 1
    parser.add_argument("--help-all", action=_HelpAll, help=f"show all options ({hidden} more)")


def cmd_train(args: argparse.Namespace) -> int:
    from ..errors import BPNNInputError
    from ..training import PRESETS, RESUME_OPTIONS, TrainConfig, train
    from ..training.defaults import DERIVED

    config = TrainConfig(**PRESETS[args.preset])
    paths, out = list(args.paths), args.out
    file_values = {}
    if args.resume and out and not paths and not args.config:
        # `train --out RUN_DIR --resume`: the data paths are in the run's own config.yaml.
        from pathlib import Path

        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise BPNNInputError(f"{out}: nothing to resume (no config.yaml); give the DATA paths or --config")
        args.config = str(saved)
    if args.config:  # flags win over the file
        file_values = read_config(args.config)
        paths = paths or file_values.pop("data", [])
        out = out or file_values.pop("out", None)
        config = dataclasses.replace(config, **{k: v for k, v in file_values.items() if k not in ("data", "out")})
    if not paths:
        raise BPNNInputError("no training data: give DATA paths or 'data' in --config")
    if not out:
        raise BPNNInputError("no run directory: give --out RUN_DIR or 'out' in --config")
    args.paths, args.out = [str(p) for p in ([paths] if isinstance(paths, str) else paths)], str(out)
    overrides = {
        k: getattr(args, k)
        for k in ("stress_weight", "energy_key", "forces_key", "stress_key", "cutoff", "hidden", "activation",
                  "dropout", "batch_size", "max_energy", "patience", "seed", "member_seed", "force_loss",
                  "huber_delta", "energy_loss", "energy_huber_delta", "init_model", "time_limit_minutes", "members", "ef_epochs", "ef_learning_rate",
                  "ef_final_learning_rate", "ef_warmup_epochs", "ef_force_weight", "weight_decay", "ema_decay",
                  "ef_atoms_per_batch", "ef_lbfgs_steps", "ef_final_epochs", "ef_final_force_factor",
                  "val_fraction", "test_fraction", "train_on_test", "repulsion", "repulsion_from",
                  "repulsion_force_weight", "data_parallel")
        if getattr(args, k) is not None
    }
    if args.descriptors is not None:
        overrides["preset"] = args.descriptors
    config = dataclasses.replace(config, **overrides)
    if args.bootstrap:
        config.bootstrap = True
    if args.keep_all:
        config.max_energy = None
    if args.fit_references:
        config.reference_energies = None
    if args.references or args.reference:
        given = read_references(args.references) if args.references else {}
        given.update(dict(args.reference or ()))
        # Given values replace the defaults; other elements are fitted.
        config.reference_energies = given
    # What the user did not set is derived from the data (training.defaults), except for the study's
    # preset, which defines its own set-up; fine-tuning (--init) takes the network from its model.
    given = set(overrides) | set(file_values) | set(PRESETS[args.preset])
    if args.preset == "default" and not args.resume:
        config.derive = tuple(name for name in DERIVED if name not in given)
    verbose = 2 if args.quiet else 1
    import time

    started = time.time() - 1.0  # file times can be coarser than time.time()
    try:
        if args.tune:
            _tune(args, config, verbose)
        else:
            train(args.paths, args.out, config, resume=args.resume, verbose=verbose,
                  resume_overrides={k: v for k, v in overrides.items() if k in RESUME_OPTIONS})
    except KeyboardInterrupt:
        import sys
        from pathlib import Path

        if (Path(args.out) / "ef_state.npz").exists():
            print(f"training interrupted; the state of the last saved epoch (at most a minute old) is in "
                  f"{args.out}: continue with --resume", file=sys.stderr)
        raise
    from pathlib import Path

    final = Path(args.out) / "model.keras"
    if final.exists() and final.stat().st_mtime >= started:  # not when a time limit stopped the run early
        print(f"model saved to {final}")
    return 0


def _tune(args, config, verbose: int) -> None:
    """``train --tune``: derive, search within ``--budget``, train the best (:mod:`bpnn_jax.training.tuning_train`)."""
    from ..errors import BPNNInputError
    from ..training.data import read_training_frames
    from ..training.run import resolve_defaults
    from ..training.tuning_train import tune_and_train

    if args.resume or not config.derive:
        raise BPNNInputError("--tune searches around the derived set-up: run the same command again to resume a "
                             "search (not --resume), and leave out --preset seed and --init")
    if not args.budget > 0:
        raise BPNNInputError(f"--budget must be > 0 minutes, got {args.budget}")
    atoms = read_training_frames(args.paths, config, progress=verbose == 1)
    base, reasons = resolve_defaults(config, atoms)
    if verbose:
        print("options from the data (the search starts here):\n  " + "\n  ".join(reasons), flush=True)
    tune_and_train(args.paths, args.out, base, budget_minutes=args.budget, max_trials=args.tune_trials,
                   verbose=verbose)


def read_references(path) -> dict[str, float]:
    """``--references FILE``: a JSON/YAML mapping element -> eV, checked."""
    import math
    from pathlib import Path

    import yaml
    from ase.data import chemical_symbols

    from ..errors import BPNNInputError

    try:
        raw = yaml.safe_load(Path(path).read_text())  # YAML reads JSON too
    except OSError as exc:
        raise BPNNInputError(f"{path}: cannot read the reference energies ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise BPNNInputError(f"{path}: not valid JSON/YAML ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise BPNNInputError(f"{path}: expected a mapping of element symbol to energy in eV, e.g. {{Cu: -3.5}}")
    out = {}
    for el, value in raw.items():
        if str(el) not in chemical_symbols[1:]:
            raise BPNNInputError(f"{path}: {el!r} is not an element symbol")
        try:
            out[str(el)] = float(value)
        except (TypeError, ValueError):
            raise BPNNInputError(f"{path}: reference energy of {el} is not a number: {value!r}") from None
        if not math.isfinite(out[str(el)]):
            raise BPNNInputError(f"{path}: reference energy of {el} is not finite")
    return out


def read_config(path) -> dict:
    """Options of ``train --config FILE`` as TrainConfig field values (plus 'data' and 'out')."""
    from pathlib import Path

    import yaml

    from ..errors import BPNNInputError
    from ..training import TrainConfig
    from ..training.config import REMOVED_OPTIONS, drop_removed_options

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BPNNInputError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise BPNNInputError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BPNNInputError(f"{path}: expected a mapping of option names to values, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    aliases = {"lr": "learning_rate", "ef_lr": "ef_learning_rate", "ef_final_lr": "ef_final_learning_rate",
               "init": "init_model", "time_limit": "time_limit_minutes"}
    out, removed = {}, {}
    for key, value in raw.items():
        name = aliases.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name in ("data", "out"):
            out[name] = value
            continue
        if name in REMOVED_OPTIONS:  # config files of earlier runs hold them
            removed[name] = value
            continue
        if name not in fields:
            raise BPNNInputError(f"{path}: unknown option {key!r} (known: data, out, "
                                 f"{', '.join(sorted(fields))})")
        if name == "hidden":
            value = _hidden(value) if isinstance(value, str) else tuple(int(v) for v in value)
        elif name == "ef_force_weight" and isinstance(value, (list, tuple)):
            value = tuple(float(v) for v in value)
        out[name] = value
    drop_removed_options(removed, str(path))
    return out
