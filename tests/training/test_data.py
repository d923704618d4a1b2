"""The train/validation/test split of a run (bpnn_jax.training.data.split_indices)."""

import numpy as np
import pytest

from bpnn_jax.training.data import split_indices


@pytest.mark.parametrize("n", [10, 6934])
def test_split_is_a_partition_and_reproducible(n):
    parts = split_indices(n, 0.1, 0.1, seed=0)
    joined = np.concatenate([parts["train"], parts["val"], parts["test"]])
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert len(parts["test"]) == round(0.1 * n) and len(parts["val"]) == round(0.1 * n)
    again = split_indices(n, 0.1, 0.1, seed=0)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_indices(n, 0.1, 0.1, seed=1)
    assert not np.array_equal(parts["test"], other["test"])


def test_test_split_does_not_depend_on_the_validation_fraction():
    # The *_val2 recipes train on most of the old validation split and are judged on the same test split.
    n = 6934
    old, new = split_indices(n, 0.1, 0.1, seed=0), split_indices(n, 0.02, 0.1, seed=0)
    assert np.array_equal(old["test"], new["test"])
    assert len(new["val"]) == 139
    assert set(new["val"]) <= set(old["val"])
    assert set(old["train"]) <= set(new["train"])
    assert set(new["train"]) - set(old["train"]) == set(old["val"]) - set(new["val"])
