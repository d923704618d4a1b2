"""The options of a training run (:class:`TrainConfig`) and its named set-ups."""

from __future__ import annotations

import dataclasses



from ..io.energies import REFERENCE_ENERGIES_TIO2


@dataclasses.dataclass
class TrainConfig:
    """All settings of a training run (saved as ``config.json``).

    Attributes:
        preset: symmetry-function set: "auto" (artrith-urban for O/Ti
            data, imbalzano otherwise), "artrith-urban", "imbalzano", or a
            JSON/YAML parameter file (see :meth:`~bpnn_jax.descriptors.
            SymmetryFunctionSet.preset`).
        cutoff: Rc in Å of the imbalzano set (default 6.0; the others fix
            their own).
        stress_weight: weight of the mean squared stress error (GPa² per
            Voigt component, structures with a stress) against the energy
            term (eV²/atom²) in the committee stage; 0 = no stress term.
            Strain Jacobians are then computed and cached too.
        energy_key, forces_key, stress_key: where extended XYZ / ASE frames
            keep their labels (:class:`~bpnn_jax.io.FrameKeys`; None: ASE's
            results, then the usual keys).
        hidden: nodes per hidden layer.
        activation: hidden activation.
        dropout: inverted-dropout rate of the hidden layers while training
            (:class:`~bpnn_jax.training.jacobian.CommitteeConfig`).
        batch_size: structures per mini-batch of the committee trainer,
            about (None: ``ef_atoms_per_batch`` decides).  The trainer
            batches by padded atoms: ``ef_atoms_per_batch`` becomes
            ``batch_size`` x the training structures' mean padded atom
            count (:func:`~bpnn_jax.training.jacobian.atoms_per_batch_for`).
        atoms_per_batch: padded atoms per batch of the descriptor
            computation (memory, not training).
        energy_loss: penalty of the per-atom energy error: "mse", "mae" or
            "huber" (:func:`~bpnn_jax.training.jacobian.penalty`).
        force_loss: penalty of the force components' errors: "mse" or "huber".
        huber_delta: eV/Å where the Huber force loss turns linear.
        energy_huber_delta: eV/atom where the Huber energy loss turns linear.
        init_model: fine-tune this trained committee (a ``.keras`` path or
            a shipped name such as "tio2") instead of fresh networks: its
            committee, architecture, descriptors, statistics, reference
            energies and baseline are kept.
        time_limit_minutes: stop after the epoch that crosses this wall
            time (whole run); the best epoch so far is kept.  None = no limit.
        max_energy: structures with cohesive energy above this (eV/atom) are
            excluded from training and validation (aenet's MAXENERGY);
            None keeps everything.
        val_fraction, test_fraction: split fractions.
        train_on_test: train on the test split too (a final refit on more
            data with a recipe whose held-out errors were measured before):
            the split is drawn as without it, the test structures join the
            training ones, validation is unchanged, and ``split.json`` says
            so (``evaluate --split RUN_DIR/split.json:test`` then refuses).
        seed: split, initialisation and shuffling seed.
        member_seed: the E+F committee's initialisation, bootstrap and
            shuffling seed where it should differ from ``seed``: another
            committee on the same split (None: ``seed``).
        patience: early-stopping patience (epochs) per stage.
        reference_energies: free-atom energies (eV); None = fitted by least
            squares on composition.
        members: committee size K (>= 1) of the committee trainer on cached
            descriptor Jacobians (:mod:`bpnn_jax.training.jacobian`), the
            one trainer.  The run is: descriptors, Jacobians (cached in ``RUN_DIR/cache``), mini-batch
            Adam on energies and forces for every member at once, optional
            L-BFGS polish, a BPNN with ``members=K``.
        ef_epochs: Adam epochs of that stage.
        ef_learning_rate, ef_final_learning_rate: peak and final learning
            rate (linear warm-up over ``ef_warmup_epochs``, cosine decay).
        ef_warmup_epochs: warm-up epochs.
        ef_force_weight: force weight lambda of that stage (eV²/Å²
            against eV²/atom²).
        weight_decay: decoupled weight decay of the kernels (AdamW).
        ema_decay: per-step decay of the validated weight average.
        ef_atoms_per_batch: padded atoms per mini-batch.
        bootstrap: Poisson bootstrap of the training structures per member.
        ef_lbfgs_steps: full-batch L-BFGS polish iterations (all members
            at once) after Adam.
        ef_final_epochs: the last this many of ``ef_epochs`` are a final
            phase with every force weight times ``ef_final_force_factor``
            (< 1 weighs energies more; best points chosen afresh in it).
        ef_final_force_factor: force-weight factor of that phase.
        repulsion: {"A-B": rc} cut-offs (Å) of a short-range repulsive
            pair baseline (:mod:`bpnn_jax.model.repulsion`), e.g. ``{"Ti-Ti": 2.0,
            "Ti-O": 1.6, "O-O": 1.8}``: fitted to the training energies and
            forces before the networks (which then learn the rest) and
            saved in the model; None = no baseline.
        repulsion_force_weight: weight of the squared force error (eV²/Å²)
            against the per-atom energy error (eV²/atom²) in that fit.
        repulsion_from: a model (.keras path or shipped name) whose fitted
            pair baseline is used as it is instead of fitting one (its
            ``repulsion`` cut-offs then need not be given): a committee
            trained on other data on the baseline of a model it is to be
            merged with (merging needs one baseline).
        data_parallel: split each mini-batch of the committee trainer
            across every local device (``CommitteeConfig.data_parallel``;
            several GPUs).  Not a property of the result: ``--resume``
            may change it.
        derive: options to derive from the data when the run starts
            (:mod:`bpnn_jax.training.defaults`; ``train`` on the command
            line derives every option of :data:`~bpnn_jax.training.
            defaults.DERIVED` that is not given); empty once resolved.
    """

    preset: str = "auto"
    cutoff: float | None = None
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    stress_weight: float = 0.0
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    dropout: float = 0.0
    batch_size: int | None = None
    atoms_per_batch: int = 256
    energy_loss: str = "mse"
    force_loss: str = "mse"
    huber_delta: float = 1.0
    energy_huber_delta: float = 0.01
    init_model: str | None = None
    time_limit_minutes: float | None = None
    max_energy: float | None = 1.0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    train_on_test: bool = False
    seed: int = 0
    member_seed: int | None = None
    patience: int = 100
    reference_energies: dict | None = dataclasses.field(default_factory=lambda: dict(REFERENCE_ENERGIES_TIO2))
    members: int = 5
    ef_epochs: int = 300
    ef_learning_rate: float = 2e-3
    ef_final_learning_rate: float = 2e-5
    ef_warmup_epochs: int = 5
    ef_force_weight: float | tuple = 1e-3
    weight_decay: float = 1e-5
    ema_decay: float = 0.99
    ef_atoms_per_batch: int = 768
    bootstrap: bool = False
    ef_lbfgs_steps: int = 0
    ef_final_epochs: int = 0
    ef_final_force_factor: float = 1.0
    repulsion: dict | None = None
    repulsion_force_weight: float = 0.01
    repulsion_from: str | None = None
    data_parallel: bool = False
    derive: tuple = ()

    def committee_config(self):
        """The :class:`~bpnn_jax.training.jacobian.CommitteeConfig` of the E+F stage."""
        from .jacobian import CommitteeConfig

        return CommitteeConfig(
            members=self.members, hidden=tuple(self.hidden), activation=self.activation, epochs=self.ef_epochs,
            learning_rate=self.ef_learning_rate, final_learning_rate=self.ef_final_learning_rate,
            warmup_epochs=self.ef_warmup_epochs, weight_decay=self.weight_decay, force_weight=self.ef_force_weight,
            ema_decay=self.ema_decay, atoms_per_batch=self.ef_atoms_per_batch, bootstrap=self.bootstrap,
            patience=self.patience, seed=self.seed if self.member_seed is None else self.member_seed,
            lbfgs_steps=self.ef_lbfgs_steps, stress_weight=self.stress_weight, final_epochs=self.ef_final_epochs,
            final_force_factor=self.ef_final_force_factor, energy_loss=self.energy_loss, force_loss=self.force_loss,
            huber_delta=self.huber_delta, energy_huber_delta=self.energy_huber_delta, dropout=self.dropout,
            data_parallel=self.data_parallel)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["derive"] = list(self.derive)
        return d

    @classmethod
    def from_json(cls, d: dict, source: str = "config.json") -> "TrainConfig":
        """The config of a ``to_json`` dict; options of the removed Keras stages are dropped
        (:func:`drop_removed_options`, a warning naming ``source`` where they were set)."""
        d = drop_removed_options(dict(d), source)
        d["hidden"] = tuple(d["hidden"])
        if isinstance(d.get("ef_force_weight"), list):
            d["ef_force_weight"] = tuple(d["ef_force_weight"])
        d["derive"] = tuple(d.get("derive") or ())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: Options of the removed Keras training stages: {name: (the value every run had unless told otherwise,
#: what replaced it)}.  Config files of earlier runs hold them; they are read and dropped.
REMOVED_OPTIONS: dict[str, tuple] = {
    "learning_rate": (1e-3, "ef_learning_rate"),
    "min_learning_rate": (1e-5, "ef_final_learning_rate"),
    "energy_epochs": (1000, "ef_epochs (with ef_force_weight 0 for energies only)"),
    "lbfgs_steps": (1000, "ef_lbfgs_steps"),
    "lbfgs_force_weight": (1e-4, "ef_force_weight"),
    "force_epochs": (0, "ef_epochs"),
    "force_weight": (3e-4, "ef_force_weight"),
    "force_lr_factor": (0.05, "ef_learning_rate"),
    "force_subset": (None, "nothing: every epoch visits every training structure"),
}


def drop_removed_options(values: dict, source: str) -> dict:
    """``values`` without the :data:`REMOVED_OPTIONS`; a warning names those set to other than their default.

    Config files of runs of the Keras stages (and every ``config.yaml``
    written before they were removed) hold them, so they are read, not
    refused; a resumed run carries them.
    """
    changed = [f"{k} (now {REMOVED_OPTIONS[k][1]})" for k in values
               if k in REMOVED_OPTIONS and values[k] != REMOVED_OPTIONS[k][0]]
    if changed:
        import warnings

        warnings.warn(f"{source}: ignored the options of the removed Keras training stages: {', '.join(changed)}",
                      stacklevel=3)
    return {k: v for k, v in values.items() if k not in REMOVED_OPTIONS}


#: Named set-ups.  "seed" is the original student study's set-up on the committee trainer: one network
#: (members 1) on energies only, MAE energy loss, 5 x 64 tanh, plain Adam at a constant learning rate
#: of 1e-4 (no warm-up, cosine decay, weight decay or weight average), batches of about 20 structures
#: (``batch_size``, turned into padded atoms per batch from the data), 80 epochs, no final phase; the
#: best epoch by validation energy MSE is kept.  "default": every option left to the data.
PRESETS: dict[str, dict] = {
    "seed": dict(
        members=1, ef_force_weight=0.0, energy_loss="mae", hidden=(64, 64, 64, 64, 64), activation="tanh",
        ef_learning_rate=1e-4, ef_final_learning_rate=1e-4, ef_warmup_epochs=0, weight_decay=0.0, ema_decay=0.0,
        batch_size=20, ef_epochs=80, ef_final_epochs=0, ef_final_force_factor=1.0, patience=1000, dropout=0.0,
        ef_lbfgs_steps=0, stress_weight=0.0,
    ),
    "default": dict(),
}


#: Options that ``--resume`` takes from the command line (the rest come from the run's config.json).
RESUME_OPTIONS = ("time_limit_minutes", "ef_lbfgs_steps", "data_parallel")
