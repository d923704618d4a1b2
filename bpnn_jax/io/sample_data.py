"""The bundled quick-start sample: 200 TiO2 structures as XSF files."""

from __future__ import annotations

from pathlib import Path

from ..errors import BPNNInputError

__all__ = ["sample_data_dir"]


def sample_data_dir() -> Path:
    """Directory of the packaged quick-start TiO2 sample (XSF files).

    Returns:
        ``bpnn_jax/data/tio2_sample``: 200 near-equilibrium structures of
        the aenet TiO2 data set (see ``bpnn_jax/data/README.md``).

    Raises:
        BPNNInputError: if the package was installed without its data.
    """
    d = Path(__file__).resolve().parent.parent / "data" / "tio2_sample"
    if not d.is_dir():
        raise BPNNInputError(f"sample data directory {d} is missing (package installed without data?)")
    return d
