"""Using a trained model elsewhere: the ASE calculator, LAMMPS and n2p2 exports, finite-difference checks.

* :mod:`.ase` — :class:`~.ase.BPNNCalculator`, the ASE calculator;
* :mod:`.lammps` — lammps-jax bundles (``pair_style jax/kk``);
* :mod:`.n2p2` — n2p2 files (``nnp-predict``, ``pair_style hdnnp``);
* :mod:`.force_check` — forces and stress against finite differences.
"""
