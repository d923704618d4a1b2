"""Units and tensor conventions shared by every layer (no ASE, no JAX).

The package works in eV, Å, eV/Å and eV/Å³ internally; stresses are
reported in GPa.
"""

from __future__ import annotations

import numpy as np

from .errors import XSFError

#: eV/Å³ in GPa (1 eV/Å³ = 160.21766... GPa: the elementary charge in C x 1e21).
EV_PER_A3_IN_GPA = 160.21766208

#: Voigt order of stress and strain components: xx, yy, zz, yz, xz, xy.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def stress_voigt(value, name: str, volume: float | None = None, virial: bool = False) -> np.ndarray:
    """(6,) stress in eV/Å³, :data:`VOIGT` order, from 6 (Voigt) or 9 (3 x 3) numbers.

    With ``virial`` the value is a virial W (eV) and σ = −W/V is returned.

    Raises:
        XSFError: not 6 or 9 finite numbers, or a virial without a volume;
            the message starts with ``name``.
    """
    try:
        arr = np.asarray(value, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise XSFError(name, f"stress/virial {value!r} is not numbers") from None
    if arr.size == 9:
        arr = voigt_6(arr.reshape(3, 3))
    elif arr.size != 6:
        raise XSFError(name, f"stress/virial must have 6 or 9 components, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise XSFError(name, "non-finite stress/virial")
    if virial:
        if not volume:
            raise XSFError(name, "a virial needs a periodic cell with a volume")
        arr = -arr / volume
    return arr


def voigt_6(tensor: np.ndarray) -> np.ndarray:
    """(..., 6) components of (..., 3, 3) tensors in :data:`VOIGT` order."""
    tensor = np.asarray(tensor)
    return np.stack([tensor[..., a, b] for a, b in VOIGT], axis=-1)
