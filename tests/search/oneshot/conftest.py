"""Small spaces and their supernets, built once per test session (a DARTS supernet takes seconds to build)."""

from __future__ import annotations

from pathlib import Path

import pytest

import nasforge
from nasforge.api import Spec
from nasforge.search.data import Dataset, load_dataset
from nasforge.search.oneshot.supernet import Supernet, build_supernet

SPACES = Path(__file__).resolve().parents[3] / "specs" / "spaces"
NB201 = SPACES / "nas_bench_201.yaml"
DARTS = SPACES / "darts.yaml"
NB201_TINY = {"C": 4, "N": 1, "resolution": 8}
DARTS_TINY = {"C": 4, "layers": 3}
"""Three DARTS cells: cell 0 normal, cells 1 and 2 reduction (reductions at layers // 3 and 2 * layers // 3)."""
FAST = {"epochs": 1, "batch_size": 16, "max_steps": 2}
"""One epoch of two steps: enough to run every part of a search."""


@pytest.fixture(scope="session")
def nb201() -> Spec:
    return nasforge.load(NB201, **NB201_TINY)


@pytest.fixture(scope="session")
def darts() -> Spec:
    return nasforge.load(DARTS, **DARTS_TINY)


@pytest.fixture()
def nb201_net(nb201: Spec) -> Supernet:
    return build_supernet(nb201)


@pytest.fixture(scope="session")
def darts_net_shared(darts: Spec) -> Supernet:
    """Shared by read-only tests (it takes seconds to build): do not train it or change its alphas."""
    return build_supernet(darts)


@pytest.fixture(scope="session")
def digits_nb201(nb201: Spec) -> Dataset:
    return load_dataset("digits", nb201.graph.inputs["image"], limit=240)


@pytest.fixture(scope="session")
def digits_darts(darts: Spec) -> Dataset:
    return load_dataset("digits", darts.graph.inputs["image"], limit=120)
