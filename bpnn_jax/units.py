"""Units and tensor conventions shared by every layer (no ASE, no JAX).

The package works in eV, Å, eV/Å and eV/Å³ internally; stresses are
reported in GPa.
"""

from __future__ import annotations

#: eV/Å³ in GPa (1 eV/Å³ = 160.21766... GPa: the elementary charge in C x 1e21).
EV_PER_A3_IN_GPA = 160.21766208

#: Voigt order of stress and strain components: xx, yy, zz, yz, xz, xy.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
