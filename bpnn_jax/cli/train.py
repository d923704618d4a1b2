"""Model subcommands of the command line: ``train``, ``evaluate``, ``predict``.

Registered in :data:`bpnn_jax.cli.COMMANDS`; heavy imports happen inside the
command functions.
"""

from __future__ import annotations

import argparse
import dataclasses


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
                        "--ef-lbfgs-steps and --lbfgs-steps apply)")
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
    g.add_argument("--members", type=int, default=None,
                   help="committee size (default 5; 0: one network on the legacy energy stages below)")
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
    g.add_argument("--data-parallel", action="store_true", help="split every batch over all local devices")

    g = p.add_argument_group("legacy: one network, energy stages (--members 0) and --preset seed")
    g.add_argument("--preset", choices=["default", "seed"], default="default",
                   help="'seed': the original study (MAE, 5x64, lr 1e-4, batch 20, 80 epochs, energies only)")
    g.add_argument("--init", default=None, dest="init_model", metavar="MODEL",
                   help="fine-tune MODEL (.keras or shipped name) instead of a fresh network")
    g.add_argument("--dropout", type=float, default=None)
    g.add_argument("--lr", type=float, default=None, dest="learning_rate",
                   help=f"initial learning rate (default {d.learning_rate})")
    g.add_argument("--batch-size", type=int, default=None, help="structures per batch")
    g.add_argument("--atoms-per-batch", type=int, default=None,
                   help=f"padded atoms per batch without --batch-size (default {d.atoms_per_batch})")
    g.add_argument("--energy-epochs", type=int, default=None, help=f"stage-1 epochs (default {d.energy_epochs})")
    g.add_argument("--lbfgs-steps", type=int, default=None, help=f"stage-1 L-BFGS iterations (default {d.lbfgs_steps})")
    g.add_argument("--lbfgs-force-weight", type=float, default=None,
                   help=f"force weight of those iterations (default {d.lbfgs_force_weight}; 0: energies only)")
    g.add_argument("--force-epochs", type=int, default=None, help=f"stage-2 epochs (default {d.force_epochs})")
    g.add_argument("--force-weight", type=float, default=None, help=f"stage-2 force weight (default {d.force_weight})")
    g.add_argument("--force-loss", choices=["mse", "huber"], default=None, help=f"default {d.force_loss}")
    g.add_argument("--huber-delta", type=float, default=None, help=f"eV/Å (default {d.huber_delta})")
    g.add_argument("--force-subset", type=int, default=None, help="structures drawn per stage-2 epoch")
    hide_advanced_options(p, TRAIN_COMMON)
    return p


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
    from ..training import PRESETS, RESUME_OPTIONS, TrainConfig, train
    from ..training.defaults import DERIVED

    from ..errors import BPNNInputError

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
        for k in ("stress_weight", "energy_key", "forces_key", "stress_key", "cutoff", "hidden", "activation", "dropout", "learning_rate", "batch_size", "energy_epochs", "lbfgs_steps", "force_epochs",
                  "lbfgs_force_weight", "force_weight", "force_subset", "max_energy", "patience", "seed", "member_seed", "force_loss", "huber_delta",
                  "atoms_per_batch", "init_model", "time_limit_minutes", "members", "ef_epochs", "ef_learning_rate",
                  "ef_final_learning_rate", "ef_warmup_epochs", "ef_force_weight", "weight_decay", "ema_decay",
                  "ef_atoms_per_batch", "ef_lbfgs_steps", "ef_final_epochs", "ef_final_force_factor",
                  "val_fraction", "test_fraction", "train_on_test", "repulsion", "repulsion_from",
                  "repulsion_force_weight")
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
    config.data_parallel = args.data_parallel
    # What the user did not set is derived from the data (training.defaults), except for the study's
    # preset and fine-tuning, which define their own set-up.
    given = set(overrides) | set(file_values) | set(PRESETS[args.preset])
    if args.preset == "default" and not config.init_model and not args.resume:
        config.derive = tuple(name for name in DERIVED if name not in given)
    verbose = 2 if args.quiet else 1
    try:
        if args.tune:
            _tune(args, config, verbose)
        else:
            train(args.paths, args.out, config, resume=args.resume, verbose=verbose,
                  resume_overrides={k: v for k, v in overrides.items() if k in RESUME_OPTIONS})
    except KeyboardInterrupt:
        import sys
        from pathlib import Path

        if (Path(args.out) / "state.json").exists():
            print(f"training interrupted; every finished epoch is saved in {args.out}: continue with "
                  f"--resume", file=sys.stderr)
        raise
    print(f"model saved to {args.out}/model.keras")
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


def _split_files(spec: str, default: str = "test") -> list[str]:
    """Files of ``RUN_DIR/split.json[:NAME]`` (NAME ``default`` when not given), resolved like the run saw them."""
    import json
    from pathlib import Path

    from ..errors import BPNNInputError

    path, _, name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    name = name or default
    p = Path(path)
    if p.is_dir():
        p = p / "split.json"
    try:
        split = json.loads(p.read_text())
    except OSError as exc:
        raise BPNNInputError(f"{p}: cannot read the split file ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise BPNNInputError(f"{p}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if name not in split or not isinstance(split[name], list):
        raise BPNNInputError(f"{p}: no split named {name!r} (has: train, val, test)")
    if name == "test" and split.get("trained_on_test"):
        raise BPNNInputError(f"{p}: this run trained on its test split (train --train-on-test): score it on "
                             f"'{path}:val' or on other data")
    if not split[name]:
        raise BPNNInputError(f"{p}: the {name!r} split is empty")
    return [str(f) for f in split[name]]


def _interactive() -> bool:
    """Progress bars only on a terminal: logs get no progress-bar debris."""
    import sys

    return sys.stderr.isatty()


def add_key_args(p) -> None:
    """``--energy-key``, ``--forces-key``, ``--stress-key`` (labels of ASE-format frames)."""
    g = p.add_argument_group("labels of extended XYZ / ASE frames (default: ASE's results, then the usual keys)")
    g.add_argument("--energy-key", default=None, metavar="KEY", help="info key of the energy, eV")
    g.add_argument("--forces-key", default=None, metavar="KEY", help="arrays key of the forces, eV/Å")
    g.add_argument("--stress-key", default=None, metavar="KEY",
                   help="info key of the stress, eV/Å³ (a key containing 'virial' is read as a virial, eV)")


def frame_keys(args):
    """The :class:`~bpnn_jax.io.FrameKeys` of ``--energy-key`` etc."""
    from ..io.frames import FrameKeys

    return FrameKeys(getattr(args, "energy_key", None), getattr(args, "forces_key", None),
                     getattr(args, "stress_key", None))


def parse_reference(text: str) -> tuple[str, float]:
    """argparse type for ``--ref SYMBOL=EV``."""
    symbol, sep, value = text.partition("=")
    symbol = symbol.strip()
    try:
        energy = float(value)
    except ValueError:
        energy = float("nan")
    if not sep or not symbol or energy != energy or energy in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected SYMBOL=ENERGY_EV (e.g. O=-432.503149303), got {text!r}")
    return symbol, energy


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
    out = {}
    for key, value in raw.items():
        name = aliases.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name in ("data", "out"):
            out[name] = value
            continue
        if name not in fields:
            raise BPNNInputError(f"{path}: unknown option {key!r} (known: data, out, "
                                 f"{', '.join(sorted(fields))})")
        if name == "hidden":
            value = _hidden(value) if isinstance(value, str) else tuple(int(v) for v in value)
        elif name == "ef_force_weight" and isinstance(value, (list, tuple)):
            value = tuple(float(v) for v in value)
        out[name] = value
    return out


# ------------------------------------------------------- input validation
def check_output(path) -> None:
    """Fail before any computation if ``path`` cannot be written."""
    from pathlib import Path

    from ..errors import BPNNInputError

    if path is None:
        return
    out = Path(path)
    if not out.parent.is_dir():
        raise BPNNInputError(f"cannot write {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise BPNNInputError(f"cannot write {out}: it is a directory")


def _structure_problem(model, model_name: str, atoms) -> str | None:
    """Why ``atoms`` cannot be used with ``model`` (without the file name), or None."""
    from ..errors import StructureError
    from ..descriptors.neighbors import check_geometry

    name = str(atoms.info.get("file", "structure"))
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(model.elements), key=symbols.index)
    if unknown:
        first = symbols.index(unknown[0])
        return (
            f"element(s) {', '.join(unknown)} (first: atom {first}, counting from 0) not among the "
            f"elements {', '.join(model.elements)} of model {model_name}"
        )
    try:
        check_geometry(atoms.positions, atoms.cell.array, atoms.pbc, name=name, symbols=symbols)
    except StructureError as exc:
        text = str(exc)
        return text[len(name) + 2 :] if text.startswith(f"{name}: ") else text
    return None


def read_inputs(paths, model, model_name: str, *, require_energy: bool, skip_invalid: bool, keys=None):
    """Read every structure and check it against the model, before any output.

    Every file is read and checked (XSF syntax, energy line when
    ``require_energy``, elements known to the model, geometry), so that one
    run reports all bad files.  Without ``skip_invalid`` any bad file stops
    the command with the first problem (file, line, reason) and the number
    of others; with it, bad files are listed on stderr and skipped.

    Returns:
        The valid structures, in file order.

    Raises:
        BPNNInputError: a bad file (without ``skip_invalid``), no valid
            structure at all, a missing path or an empty directory.
    """
    import sys

    from ..errors import BPNNInputError, XSFError
    from ..io.frames import find_xsf_files, read_frames

    files = find_xsf_files(paths)
    good, bad = [], []  # bad: (file or FILE@INDEX, reason without the file, full message)
    for f in files:
        try:
            frames = read_frames(f, require_energy=require_energy, keys=keys)
        except XSFError as exc:
            reason = exc.reason if exc.line is None else f"line {exc.line}: {exc.reason}"
            bad.append((exc.path or str(f), reason, str(exc)))
            continue
        for atoms in frames:
            name = atoms.info.get("file", str(f))
            problem = _structure_problem(model, model_name, atoms)
            if problem is None:
                good.append(atoms)
            else:
                bad.append((name, problem, f"{name}: {problem}"))
    if bad and not skip_invalid:
        msg = bad[0][2]
        if len(bad) > 1:
            others = ", ".join(b[0] for b in bad[1:4]) + (", ..." if len(bad) > 4 else "")
            msg += f" (and {len(bad) - 1} more invalid file(s): {others})"
        raise BPNNInputError(f"{msg}; nothing written (--skip-invalid skips invalid files)")
    for name, reason, _ in bad:
        print(f"warning: skipped {name}: {reason}", file=sys.stderr)
    if not good:
        raise BPNNInputError(f"no valid structures among {len(files)} file(s); nothing written")
    if bad:
        print(f"skipped {len(bad)} invalid file(s) of {len(files)}", file=sys.stderr)
    return good


# ---------------------------------------------------------------- evaluate
def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score a model on labelled structure files (meV/atom, eV/Å) with plots",
        description=(
            "Energy RMSE/MAE (meV/atom), total-energy RMSE (eV), force RMSE/MAE (eV/Å), residual statistics, "
            "on all structures and on those with cohesive energy <= --max-energy (eV/atom)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or a shipped model name (e.g. tio2)")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="structure files (extended XYZ, any ASE format, XSF) or directories")
    p.add_argument("--split", metavar="RUN_DIR/split.json[:NAME]", default=None,
                   help="evaluate the structures of one part of a training run's split (NAME: test, the "
                        "default, val or train) instead of, or in addition to, PATHs")
    p.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots to DIR")
    p.add_argument("--no-forces", action="store_true", help="energies only (faster)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="evaluate descriptors and networks in this precision (default: the model's, float32 for "
                        "shipped models)")
    p.add_argument("--max-energy", type=float, default=1.0,
                   help="also report metrics for cohesive energy <= this, eV/atom (default 1.0, aenet's MAXENERGY)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid files (unreadable, no energy line, elements the model lacks, overlapping "
                        "atoms), listed on stderr; by default the first stops the command before any output")
    add_key_args(p)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..training.evaluation import evaluate_structures, write_plots, write_report
    from ..model.bpnn import load_model

    check_output(args.json)
    paths = list(args.paths) + (_split_files(args.split) if args.split else [])
    if not paths:
        from ..errors import BPNNInputError

        raise BPNNInputError("nothing to evaluate: give PATHs or --split RUN_DIR/split.json")
    model = load_model(args.model, dtype=args.dtype)
    atoms = read_inputs(paths, model, args.model, require_energy=True, skip_invalid=args.skip_invalid,
                        keys=frame_keys(args))
    report = evaluate_structures(model, atoms, forces=not args.no_forces, max_energy=args.max_energy,
                                 progress=_interactive())
    for label, key in (("all structures", "all"), (f"cohesive <= {args.max_energy} eV/atom", "within_max_energy")):
        m = report.get(key)
        if not m or not m.get("n_structures"):
            continue
        line = (f"{label}: n={m['n_structures']}  energy RMSE {m['energy_rmse_mev_atom']:.2f} meV/atom  "
                f"MAE {m['energy_mae_mev_atom']:.2f} meV/atom  total-energy RMSE {m['energy_rmse_ev']:.4f} eV")
        if "force_rmse_ev_a" in m:
            line += f"  force RMSE {m['force_rmse_ev_a']:.4f} eV/Å  MAE {m['force_mae_ev_a']:.4f} eV/Å"
        if "stress_rmse_gpa" in m:
            line += f"  stress RMSE {m['stress_rmse_gpa']:.4f} GPa  MAE {m['stress_mae_gpa']:.4f} GPa"
        if m.get("spread_error_spearman") is not None:
            line += f"  spread-error Spearman {m['spread_error_spearman']:.2f}"
        print(line)
    if args.json:
        write_report(report, args.json)
    if args.plots:
        model_path = Path(args.model)
        history = None
        if model_path.exists():  # a run directory's history: the committee stage's, else the Keras stages'
            candidates = [model_path.parent / "ef_history.csv", model_path.parent / "history.csv"]
            history = next((c for c in candidates if c.exists()), None)
        for p in write_plots(report, args.plots, history):
            print(f"wrote {p}")
    return 0


# ----------------------------------------------------------------- predict
def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="predict energies (and forces) of structure files",
        description="Write a CSV with file, n_atoms, energy_ev (DFT scale) and energy_per_atom_ev.",
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or a shipped model name (e.g. tio2)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure files or directories (energies not needed)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="CSV to write")
    p.add_argument("--forces", metavar="FILE.xyz", help="also write structures with predicted energy and forces (extended XYZ)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="evaluate descriptors and networks in this precision (default: the model's)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid files (unreadable, elements the model lacks, overlapping atoms), listed on "
                        "stderr; by default the first stops the command before any output")
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    import numpy as np

    from ..descriptors.batch import prepare_structures
    from ..io.atomic import atomic_write
    from ..model.bpnn import load_model, total_energy
    from ..training import predict_structures

    check_output(args.out)
    check_output(args.forces)
    model = load_model(args.model, dtype=args.dtype)
    atoms = read_inputs(args.paths, model, args.model, require_energy=False, skip_invalid=args.skip_invalid)
    hs = prepare_structures(atoms, model.elements, model.spec.cutoff, progress=_interactive())
    e_rel, forces, e_std, _ = predict_structures(model, hs, forces=bool(args.forces), progress=_interactive(),
                                                 dtype=np.dtype(model.compute_dtype or "float32"), uncertainty=True)
    energy = total_energy(model, e_rel, [a.get_chemical_symbols() for a in atoms])
    committee = model.members > 1
    with atomic_write(args.out, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "n_atoms", "energy_ev", "energy_per_atom_ev"] + (["energy_std_ev"] if committee else []))
        for a, e, sd in zip(atoms, energy, e_std):
            w.writerow([a.info.get("file", ""), len(a), f"{e:.8f}", f"{e / len(a):.8f}"]
                       + ([f"{sd:.6f}"] if committee else []))
    if args.forces:
        import ase.io
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for a, e, f in zip(atoms, energy, forces):
            b = a.copy()
            b.calc = SinglePointCalculator(b, energy=float(e), forces=np.asarray(f))
            frames.append(b)
        with atomic_write(args.forces) as fh:
            ase.io.write(fh, frames, format="extxyz")
    print(f"wrote {args.out}" + (f" and {args.forces}" if args.forces else ""))
    return 0


# ------------------------------------------------------------ check-forces
def add_check_forces_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check-forces",
        help="check a model's forces and stress against finite differences of its energy (float64)",
        description=(
            "Evaluate the model in float64 and compare its forces and stress with central finite differences "
            "of its energy, per structure; errors are relative to the largest finite-difference component. "
            "Exit status 1 when any error exceeds --tolerance."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="a .keras file or a shipped model name (e.g. tio2)")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="structure files or directories (energies not needed)")
    p.add_argument("--json", metavar="FILE", help="write the result (one row per structure) as JSON")
    p.add_argument("--delta", type=float, default=1e-4,
                   help="finite-difference step, Å for positions and dimensionless for strain; five-point "
                        "stencil (default 1e-4)")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="largest accepted relative error of forces and stress (default 1e-5)")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="check at most this many atoms per structure (a seeded random choice; default all)")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid files instead of stopping")
    return p


def cmd_check_forces(args: argparse.Namespace) -> int:
    import json

    from ..errors import BPNNInputError
    from ..calculators.force_check import check_forces
    from ..io.atomic import atomic_write
    from ..model.bpnn import load_model

    check_output(args.json)
    if not args.delta > 0:
        raise BPNNInputError(f"--delta must be > 0 Å, got {args.delta}")
    model = load_model(args.model, dtype="float64")
    atoms = read_inputs(args.paths, model, args.model, require_energy=False, skip_invalid=args.skip_invalid)
    result = check_forces(model, atoms, delta=args.delta, max_atoms=args.max_atoms)
    result["tolerance"] = args.tolerance
    bad = []
    for r in result["structures"]:
        s_err = r.get("max_rel_stress_error")
        stress_txt = "" if s_err is None else f"  stress {s_err:.2e}"
        print(f"{r['file']}: forces {r['max_rel_force_error']:.2e}{stress_txt} (relative)")
        if r["max_rel_force_error"] > args.tolerance or (s_err is not None and s_err > args.tolerance):
            bad.append(r["file"])
    result["passed"] = not bad
    if args.json:
        with atomic_write(args.json) as fh:
            json.dump(result, fh, indent=2)
    s_all = result["max_rel_stress_error"]
    print(f"largest relative error: forces {result['max_rel_force_error']:.2e}"
          + ("" if s_all is None else f", stress {s_all:.2e}") + f" (tolerance {args.tolerance:g})")
    if bad:
        print(f"FAILED: {len(bad)} structure(s) above the tolerance: {', '.join(bad[:5])}")
        return 1
    return 0


# ------------------------------------------------------------------- merge
def add_merge_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "merge",
        help="merge trained committees (any descriptor sets) into one committee",
        description=(
            "Write one committee holding every member of the MODELs (same elements, hidden layers, activation "
            "and reference energies; descriptor sets may differ: the merged model computes each one, and each "
            "member reads its own). Its energy is the mean over all members, its spread their standard "
            "deviation. The extrapolation threshold is calibrated afresh on the structures of --calibrate "
            "(PATHs) and/or --split (a training run's validation part), by the rule of train."
        ),
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="two or more .keras files or shipped model names (one with --members)")
    p.add_argument("--out", required=True, metavar="FILE.keras", help="model to write")
    p.add_argument("--members", type=member_list, default=None, metavar="LIST",
                   help="keep only these members of the merged committee, numbered from 1 in MODEL order, e.g. "
                        "1-5,16-25 (descriptor sets that no kept member reads are dropped)")
    p.add_argument("--split", metavar="RUN_DIR/split.json[:NAME]", default=None,
                   help="calibrate the threshold on this part of a run's split (NAME default val)")
    p.add_argument("--calibrate", nargs="+", default=(), metavar="PATH",
                   help="calibrate the threshold on these structures (XSF, extended XYZ, directories)")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid calibration files")
    return p


def member_list(text: str) -> list[int]:
    """``1-5,16-25`` -> [0, ..., 4, 15, ..., 24] (1-based inclusive ranges in, 0-based indices out)."""
    out = []
    try:
        for item in text.split(","):
            lo, _, hi = item.strip().partition("-")
            lo, hi = int(lo), int(hi or lo)
            if lo < 1 or hi < lo:
                raise ValueError
            out.extend(range(lo - 1, hi))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give member numbers from 1, e.g. 1-5,16-25") from None
    return out


def cmd_merge(args: argparse.Namespace) -> int:
    from ..descriptors.batch import prepare_structures
    from ..model.ensemble import merge_committees, select_members
    from ..errors import BPNNInputError, ModelError
    from ..model.bpnn import load_model
    from ..training import spread_threshold

    check_output(args.out)
    if len(args.models) < 2 and args.members is None:
        raise BPNNInputError("merge needs two or more MODELs (or --members to take some of one's)")
    models = [load_model(m) for m in args.models]
    merged = merge_committees(models) if len(models) > 1 else models[0]
    if args.members is not None:
        try:
            merged = select_members(merged, args.members)
        except ModelError:  # its message counts from 0; --members counts from 1
            raise BPNNInputError(f"--members: give distinct member numbers from 1 to {merged.members} (the "
                                 f"committee of {' + '.join(args.models)} has {merged.members})") from None
    paths = list(args.calibrate) + (_split_files(args.split, default="val") if args.split else [])
    if paths:
        atoms = read_inputs(paths, merged, "(merged)", require_energy=False, skip_invalid=args.skip_invalid)
        hosts = prepare_structures(atoms, merged.elements, merged.spec.cutoff)
        merged.uncertainty_threshold = spread_threshold(merged, hosts)
    from ..training.run_state import atomic_save

    atomic_save(merged, args.out)
    thr = ("no extrapolation threshold (give --split or --calibrate)" if merged.uncertainty_threshold is None
           else f"extrapolation threshold {1000 * merged.uncertainty_threshold:.1f} meV/atom from {len(paths)} "
                f"structure(s)")
    print(f"wrote {args.out}: {merged.members} members; {merged.spec.describe()}; {thr}")
    return 0
