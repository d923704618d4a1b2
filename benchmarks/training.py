"""Benchmark: cost of energy+force training on the real training code path.

Usage::

    python benchmarks/training.py [--subset N] [--epochs 3] [--batch-atoms 256]
                                  [--out-dir DIR] [--data DIR] [--tag TAG]

What runs is the force stage of :func:`bpnn_jax.training.train`: a
:class:`~bpnn_jax.model.BPNN` with ``force_weight > 0`` compiled with Adam
and fitted with Keras's ``fit`` on :class:`~bpnn_jax.training.GeometryDataset`
batches (positions and cell -> symmetry functions -> energies, forces by
autodiff inside the model, loss on per-atom energies and forces, so the
update differentiates through the force).  Structures come from
:func:`~bpnn_jax.training.load_training_data` (XSF reading, energies
relative to the free-atom references, the +1 eV/atom filter, neighbour
lists); all kept structures are trained on, shuffled every epoch.  Not
included: the validation pass and the per-epoch checkpoint files of
``train`` (I/O).

By default the model starts from the shipped ``tio2`` weights and
statistics (what the force stage does after the energy stage); ``--init
fresh`` builds a new model and computes the statistics first.

Measured:

* compile time: first epoch minus the mean steady epoch (epochs 2...), and
  the compile time JAX reports (tracing + lowering + XLA compilation of the
  train step, from ``jax.monitoring``);
* steady epoch time, seconds per step, structures/s and atoms/s;
* distinct batch shapes (B, N, slots) of an epoch's plan, and the number of
  train-step compilations JAX actually did in each epoch;
* padding waste: padded atom slots vs real atoms, padded neighbour-pair
  slots vs real pairs within the cut-off, and padded vs real angular
  pair-block work (sum over element pairs a <= b of M_a M_b per atom).

Writes ``<out-dir>/training_<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    add_common_args,
    default_tag,
    device_peak_memory_mb,
    fmt,
    footer,
    log,
    machine_line,
    new_result,
    record_error,
    rss_peak_mb,
    select_files,
    write_results,
)

#: JAX events whose durations make up a compilation.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
    "/jax/compilation_cache/cache_retrieval_time_sec",
)


class CompileLog:
    """Records JAX compilation events (name of the jitted function, seconds)."""

    def __init__(self):
        self.events: list[tuple[str, str, float]] = []
        self.active = False

    def install(self) -> bool:
        try:
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(self._on_event)
            self.active = True
        except Exception:  # an old JAX without monitoring: counts become None
            self.active = False
        return self.active

    def _on_event(self, event, duration, **kwargs):
        if event in _COMPILE_EVENTS:
            self.events.append((event, str(kwargs.get("fun_name", "")), float(duration)))

    def mark(self) -> int:
        return len(self.events)

    def summary(self, start: int, end: int | None = None, match: str = "train_step") -> dict:
        """Compilations of functions whose name contains ``match`` between two marks."""
        ev = self.events[start:end]
        mine = [e for e in ev if match in e[1]]
        return {
            "train_step_compilations": sum(1 for e in mine if e[0] == "/jax/core/compile/backend_compile_duration"),
            "train_step_compile_s": round(sum(e[2] for e in mine), 2),
            "all_compilations": sum(1 for e in ev if e[0] == "/jax/core/compile/backend_compile_duration"),
            "all_compile_s": round(sum(e[2] for e in ev), 2),
            "cache_hits": sum(1 for e in ev if e[0].startswith("/jax/compilation_cache")),
        }


def padding_waste(structures, plan) -> dict:
    """Padding of a batch plan: fractions of padded atoms, pair slots and angular pair work that are waste."""
    real_atoms = real_pairs = real_work = 0
    pad_atoms = pad_pairs = pad_work = 0
    for members, b, n, slots in plan:
        s_count = len(slots)
        pad_atoms += b * n
        pad_pairs += b * n * sum(slots)
        pad_work += b * n * sum(slots[a] * slots[c] for a in range(s_count) for c in range(a, s_count))
        for k in members:
            s = structures[int(k)]
            real_atoms += s.n_atoms
            real_pairs += len(s.nl.centers)
            # Neighbours of each element per atom: c[i, e].
            c = np.zeros((s.n_atoms, s_count), np.int64)
            np.add.at(c, (s.nl.centers, s.species[s.nl.neighbors]), 1)
            real_work += int(sum(np.sum(c[:, a] * c[:, e]) for a in range(s_count) for e in range(a, s_count)))
    shapes = sorted({(int(b), int(n), tuple(int(x) for x in slots)) for _, b, n, slots in plan})
    return {
        "batches": len(plan),
        "shapes": len(shapes),
        "shape_list": [f"B={b} N={n} slots={s}" for b, n, s in shapes],
        "real_atoms": real_atoms,
        "padded_atom_slots": pad_atoms,
        "atom_waste": round(1 - real_atoms / pad_atoms, 4) if pad_atoms else None,
        "real_pairs": real_pairs,
        "padded_pair_slots": pad_pairs,
        "pair_slot_waste": round(1 - real_pairs / pad_pairs, 4) if pad_pairs else None,
        "angular_work_waste": round(1 - real_work / pad_work, 4) if pad_work else None,
    }


def build(args, data, res):
    """The model: shipped weights (default) or a fresh one with statistics."""
    import keras

    import bpnn_jax
    from bpnn_jax.training import TrainConfig, build_model, compute_statistics, featurize_host

    elements = tuple(data["elements"])
    model = None
    if args.init == "shipped":
        try:
            model = bpnn_jax.load_model("tio2")
            if tuple(model.elements) != elements:
                log(f"shipped model elements {model.elements} != data elements {elements}: fresh model instead")
                res["notes"].append("shipped model did not match the data's elements; a fresh model was used")
                model = None
        except Exception as exc:
            record_error(res, "loading the shipped model (a fresh one is used)", exc)
            model = None
    if model is None:
        config = TrainConfig(force_weight=args.force_weight, atoms_per_batch=args.batch_atoms, seed=args.seed)
        model = build_model(config, elements, data["references"])
        t0 = time.perf_counter()
        S = data["structures"]
        sf = featurize_host(S, data["spec"], atoms_per_batch=args.batch_atoms)
        model.set_statistics(**compute_statistics(sf, [s.species for s in S], [s.energy for s in S], len(elements)))
        res["timings"]["statistics_s"] = round(time.perf_counter() - t0, 2)
        res["settings"]["init"] = "fresh"
    else:
        res["settings"]["init"] = "shipped tio2"
    model.compute_forces = True
    model.force_weight = float(args.force_weight)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    return model


def make_timer(ds, compile_log, save=None, max_seconds=None, save_every_s: float = 30.0):
    """The epoch/step timer.

    ``save()`` runs after every epoch and, within an epoch, every
    ``save_every_s`` seconds (so a run cut short keeps its step timings);
    with ``max_seconds`` training stops after the epoch past which the next
    one would not fit.
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall/CPU time of every epoch and step; train-step compilations per epoch and per step.

        Having a batch-level hook makes Keras run callbacks synchronously, so a
        step's time includes waiting for its result (as with a progress bar).
        A step during which JAX compiled the train step is a compiling step;
        the others give the steady step time even before an epoch completes.
        """

        def __init__(self):
            super().__init__()
            self.epochs: list[dict] = []
            self.in_progress: dict | None = None
            self.stopped_for_time = None

        def on_train_begin(self, logs=None):
            self.fit_start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.mark = compile_log.mark()
            self.steps: list[float] = []
            self.compiling: list[bool] = []
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.last_save = self.t0

        def on_train_batch_begin(self, batch, logs=None):
            self.step_mark = compile_log.mark()
            self.ts = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.steps.append(now - self.ts)
            self.compiling.append(bool(compile_log.active
                                       and compile_log.summary(self.step_mark)["train_step_compilations"]))
            k = len(self.steps)
            if k == 1 or k % 25 == 0:
                log(f"  step {k}/{len(ds)}: {self.steps[-1]:.2f} s"
                    + (" (compiled)" if self.compiling[-1] else ""))
            if save is not None and now - self.last_save > save_every_s:
                self.in_progress = self._row(logs)
                save()
                self.last_save = time.perf_counter()

        def _row(self, logs) -> dict:
            wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            plain = [t for t, c in zip(self.steps, self.compiling) if not c]
            logs = logs or {}
            row = {
                "epoch": self.epoch + 1,
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "steps": len(self.steps),
                "step_median_s": round(statistics.median(self.steps), 4) if self.steps else None,
                "step_max_s": round(max(self.steps), 3) if self.steps else None,
                "compiling_steps": int(sum(self.compiling)),
                "step_median_without_compile_s": round(statistics.median(plain), 4) if plain else None,
                "loss": float(logs.get("loss", float("nan"))),
                "energy_rmse_mev_atom": float(logs.get("energy_rmse_mev_atom", float("nan"))),
                "force_rmse_ev_a": float(logs.get("force_rmse_ev_a", float("nan"))),
            }
            if compile_log.active:
                row.update(compile_log.summary(self.mark))
            return row

        def on_epoch_end(self, epoch, logs=None):
            row = self._row(logs)
            self.epochs.append(row)
            self.in_progress = None
            log(f"epoch {epoch + 1}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU, {row['steps']} steps, "
                f"loss {row['loss']:.4g}, train-step compilations {row.get('train_step_compilations')}")
            if save is not None:
                save()
            if max_seconds:
                # Next epoch's cost: the last steady one, or the first minus its compilation.
                wall = row["wall_s"]
                nxt = wall if len(self.epochs) > 1 else max(wall - row.get("train_step_compile_s", 0.0), 0.0)
                if time.perf_counter() - self.fit_start + nxt > max_seconds:
                    log(f"time budget ({max_seconds} s): stopping after epoch {epoch + 1}")
                    self.stopped_for_time = epoch + 1
                    self.model.stop_training = True

    return EpochTimer()


def summarise(res: dict) -> None:
    """Summary figures from the complete epochs (and, failing a steady one, from epoch 1's plain steps)."""
    ep = res.get("epochs") or []
    s = res["settings"]
    out: dict = {}
    steady = ep[1:]
    if ep:
        out["first_epoch_s"] = ep[0]["wall_s"]
    if steady:
        sw = statistics.mean(e["wall_s"] for e in steady)
        sc = statistics.mean(e["cpu_s"] for e in steady)
        out.update(
            steady_epoch_s=round(sw, 2),
            steady_epoch_cpu_s=round(sc, 2),
            compile_s=round(max(0.0, ep[0]["wall_s"] - sw), 2),
            step_s=round(sw / max(ep[0]["steps"], 1), 4),
            step_median_s=round(statistics.median(e["step_median_s"] for e in steady), 4),
            structures_per_s=round(s["n_structures"] / sw, 2),
            atoms_per_s=round(s["n_atoms"] / sw, 1),
            us_per_atom=round(sw / s["n_atoms"] * 1e6, 1),
        )
    else:
        # No steady epoch (one epoch, or cut short): estimate one from the steps
        # of epoch 1 during which nothing was compiled.
        first = ep[0] if ep else res.get("epoch_in_progress")
        n_steps = (res.get("padding") or {}).get("batches") or (first or {}).get("steps")
        med = (first or {}).get("step_median_without_compile_s")
        if med and n_steps:
            est = med * n_steps
            out.update(
                estimated=f"from the {first['steps'] - first['compiling_steps']} steps of epoch 1 without "
                          "compilation (median x steps per epoch); no steady epoch was measured",
                estimated_steady_epoch_s=round(est, 2),
                step_median_s=round(med, 4),
                structures_per_s=round(s["n_structures"] / est, 2),
                atoms_per_s=round(s["n_atoms"] / est, 1),
                us_per_atom=round(est / s["n_atoms"] * 1e6, 1),
            )
    first = ep[0] if ep else res.get("epoch_in_progress")
    if first and "train_step_compilations" in first:
        key = "first_epoch" if ep else "epoch_1_so_far"
        out[f"train_step_compilations_{key}"] = first["train_step_compilations"]
        out[f"jax_compile_s_{key}"] = first["train_step_compile_s"]
        if ep:
            out["train_step_compilations_later_epochs"] = sum(e.get("train_step_compilations", 0) for e in steady)
    res["summary"] = out


def markdown(res: dict) -> str:
    s, t = res["settings"], res.get("timings", {})
    sm = res.get("summary", {})
    pad = res.get("padding") or {}
    lines = [
        f"# Energy+force training benchmark ({res['tag']})",
        "",
        f"{res['date']} · {s.get('n_structures')} structures, {s.get('n_atoms')} atoms "
        f"({s.get('selection')}) from `{res['data_dir']}` · model: {s.get('init')}, "
        f"{s.get('hidden')} tanh, force_weight={s.get('force_weight')}, Adam lr={s.get('learning_rate')} · "
        f"atoms_per_batch={s.get('batch_atoms')}, batch_size={s.get('batch_size')}",
        "",
        machine_line(res),
        "",
        "Path: `BPNN.fit` on `GeometryDataset` batches, shuffled per epoch, as the force stage of "
        "`bpnn_jax.training.train` (no validation pass, no checkpoint files). compile = first epoch minus the "
        "mean of the later ones; JAX compile = tracing + lowering + XLA compile of the train step as reported "
        "by `jax.monitoring`.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| read XSF + neighbour lists | {fmt(t.get('load_s'))} s |",
        f"| first epoch | {fmt(sm.get('first_epoch_s'))} s |",
        f"| compile (first − steady) | {fmt(sm.get('compile_s'))} s |",
    ]
    so_far = "epoch_1_so_far" if "jax_compile_s_epoch_1_so_far" in sm else "first_epoch"
    label = "epoch 1 so far (cut short)" if so_far == "epoch_1_so_far" else "first epoch"
    lines.append(f"| JAX-reported train-step compile, {label} | {fmt(sm.get('jax_compile_s_' + so_far))} s |")
    if sm.get("estimated"):
        lines.append(f"| steady epoch, **estimated** {sm['estimated']} | {fmt(sm['estimated_steady_epoch_s'])} s |")
    else:
        lines.append(f"| steady epoch | {fmt(sm.get('steady_epoch_s'))} s "
                     f"(CPU {fmt(sm.get('steady_epoch_cpu_s'))} s) |")
    lines += [
        f"| per step (steady, mean / median) | {fmt(sm.get('step_s'))} / {fmt(sm.get('step_median_s'))} s |",
        f"| structures/s | {fmt(sm.get('structures_per_s'))} |",
        f"| atoms/s | {fmt(sm.get('atoms_per_s'))} |",
        f"| µs per atom per epoch | {fmt(sm.get('us_per_atom'))} |",
        f"| steps per epoch | {pad.get('batches', '—')} |",
        f"| distinct batch shapes in the plan | {pad.get('shapes', '—')} |",
        f"| train-step compilations, {label} / later epochs | "
        f"{sm.get('train_step_compilations_' + so_far, '—')} / "
        f"{sm.get('train_step_compilations_later_epochs', '—')} |",
    ]
    if pad:
        lines += [
            f"| padding waste: atom slots | {pad['atom_waste']:.1%} ({pad['real_atoms']} real of "
            f"{pad['padded_atom_slots']}) |",
            f"| padding waste: neighbour-pair slots | {pad['pair_slot_waste']:.1%} ({pad['real_pairs']} real of "
            f"{pad['padded_pair_slots']}) |",
            f"| padding waste: angular pair-block work | {pad['angular_work_waste']:.1%} |",
        ]
    if sm.get("stopped_by_time_budget_after_epoch"):
        lines.append(f"| stopped by --max-seconds after epoch | {sm['stopped_by_time_budget_after_epoch']} |")
    if sm.get("peak_device_memory_mb") is not None:
        lines.append(f"| peak device memory | {sm['peak_device_memory_mb']:.0f} MB |")
    lines.append(f"| peak host RSS | {res.get('peak_rss_mb', '—')} MB |")
    rows = list(res.get("epochs") or [])
    if res.get("epoch_in_progress"):
        rows.append({**res["epoch_in_progress"], "epoch": f"{res['epoch_in_progress']['epoch']} (incomplete)"})
    if rows:
        lines += ["", "| epoch | wall s | CPU s | steps | median step s | median step without compile s | "
                  "max step s | train-step compilations | JAX compile s | loss | energy RMSE meV/atom | "
                  "force RMSE eV/Å |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in rows:
            lines.append(
                f"| {e['epoch']} | {e['wall_s']} | {e['cpu_s']} | {e['steps']} | {e['step_median_s']} | "
                f"{fmt(e.get('step_median_without_compile_s'), 4)} | {e['step_max_s']} | "
                f"{e.get('train_step_compilations', '—')} | {e.get('train_step_compile_s', '—')} | "
                f"{e['loss']:.4g} | {e['energy_rmse_mev_atom']:.1f} | {e['force_rmse_ev_a']:.3f} |"
            )
    if pad.get("shape_list"):
        lines += ["", "Batch shapes: " + "; ".join(f"`{x}`" for x in pad["shape_list"]) + "."]
    lines += footer(res)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--subset", type=int, default=None, help="number of structures, spread evenly over the "
                    "sorted files (default: all)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs (the first compiles; default 3)")
    ap.add_argument("--batch-atoms", type=int, default=None, help="padded atoms per batch (default: TrainConfig's)")
    ap.add_argument("--batch-size", type=int, default=None, help="structures per batch (overrides --batch-atoms)")
    ap.add_argument("--force-weight", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="default: TrainConfig's learning_rate x force_lr_factor (the force stage after stage 1)")
    ap.add_argument("--init", choices=("shipped", "fresh"), default="shipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="time budget of the epochs: stop after the epoch past which the next would not fit "
                         "(results are written after every epoch, and on SIGINT)")
    args = ap.parse_args(argv)

    from bpnn_jax.training import GeometryDataset, TrainConfig, load_training_data  # first: backend, x64

    import jax
    import keras

    defaults = TrainConfig()
    args.batch_atoms = args.batch_atoms or defaults.atoms_per_batch
    args.force_weight = defaults.force_weight if args.force_weight is None else args.force_weight
    if args.learning_rate is None:
        args.learning_rate = defaults.learning_rate * defaults.force_lr_factor
    args.tag = args.tag or default_tag()
    res = new_result("training", args, "float32")
    res["settings"] = {
        "subset": args.subset, "epochs": args.epochs, "batch_atoms": args.batch_atoms, "batch_size": args.batch_size,
        "force_weight": args.force_weight, "learning_rate": args.learning_rate, "seed": args.seed,
        "max_energy_ev_atom": defaults.max_energy,
    }
    res["timings"] = {}
    stem = f"training_{args.tag}"
    log(f"training benchmark on {res['machine']['device']} ({res['machine']['device_kind']}), tag {args.tag}")

    compile_log = CompileLog()
    if not compile_log.install():
        res["notes"].append("jax.monitoring unavailable: compilation counts not measured")
    timer = None

    def save() -> None:
        """Write what has been measured so far (after every epoch, and at the end)."""
        if timer is not None and (timer.epochs or timer.in_progress):
            res["epochs"] = timer.epochs
            if timer.in_progress:
                res["epoch_in_progress"] = timer.in_progress
            else:
                res.pop("epoch_in_progress", None)
            summarise(res)
            res["summary"]["peak_device_memory_mb"] = device_peak_memory_mb()
            if timer.stopped_for_time:
                res["summary"]["stopped_by_time_budget_after_epoch"] = timer.stopped_for_time
        res["peak_rss_mb"] = rss_peak_mb()
        write_results(res, args.out_dir, stem, markdown(res))

    try:
        t0 = time.perf_counter()
        files = select_files(args.data, args.subset)
        data = load_training_data(files, defaults, progress=False)
        S = data["structures"]
        res["timings"]["load_s"] = round(time.perf_counter() - t0, 2)
        n_atoms = int(sum(s.n_atoms for s in S))
        res["settings"].update(
            n_files=len(files), n_structures=len(S), n_atoms=n_atoms, excluded_above_max_energy=len(data["excluded"]),
            selection="all files" if args.subset is None else f"{len(files)} files spread evenly over the sorted list",
            elements=list(data["elements"]), with_forces=all(s.forces is not None for s in S),
        )
        log(f"{len(S)} structures ({n_atoms} atoms) ready in {res['timings']['load_s']} s "
            f"({len(data['excluded'])} above {defaults.max_energy} eV/atom left out)")
        if not res["settings"]["with_forces"]:
            res["notes"].append("some structures have no forces: batches then carry energies only")

        model = build(args, data, res)
        res["settings"]["hidden"] = list(model.hidden)
        res["settings"]["keras_backend"] = keras.backend.backend()
        res["settings"]["jax_x64"] = bool(jax.config.jax_enable_x64)
        ds = GeometryDataset(S, data["elements"], atoms_per_batch=args.batch_atoms, batch_size=args.batch_size,
                             shuffle=True, seed=args.seed + 1)
        try:
            res["padding"] = padding_waste(S, ds.plan)
            p = res["padding"]
            log(f"plan: {p['batches']} batches, {p['shapes']} shapes; waste: atoms {p['atom_waste']:.1%}, "
                f"pair slots {p['pair_slot_waste']:.1%}, angular work {p['angular_work_waste']:.1%}")
        except Exception as exc:
            record_error(res, "padding statistics", exc)

        timer = make_timer(ds, compile_log, save=save, max_seconds=args.max_seconds)
        try:
            model.fit(ds, epochs=args.epochs, verbose=0, callbacks=[timer], shuffle=False)
        except Exception as exc:  # keep the epochs that finished
            record_error(res, f"training stopped after {len(timer.epochs)} epochs", exc)
    except KeyboardInterrupt:
        done = len(timer.epochs) if timer is not None else 0
        res["errors"].append(f"interrupted (SIGINT) after {done} complete epochs")
        log(f"interrupted after {done} complete epochs: writing what was measured")
    save()
    if res.get("summary"):
        log("summary: " + ", ".join(f"{k}={v}" for k, v in res["summary"].items()))
    return 0 if timer is not None and timer.epochs else 1


if __name__ == "__main__":
    sys.exit(main())
