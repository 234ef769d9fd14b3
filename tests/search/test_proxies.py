"""Zero-cost proxies: hand computations on a tiny network, determinism, rankings, caller state, errors."""

from __future__ import annotations

import math

import pytest
import torch

import nasforge
from nasforge.errors import SpecError
from nasforge.search.data import Dataset, load_dataset
from nasforge.search.objectives import PROXY_METRICS, Evaluator
from nasforge.search.proxies import PROXIES, compute_proxies, connection_parameters, make_proxy_fn

TINY = """
name: tiny
inputs: {x: [B, 4]}
graph:
  - {id: fc1, op: linear, out: 16, bias: false}
  - {id: act, op: relu}
  - {id: fc2, op: linear, out: 3, bias: false}
"""
CNN = """
name: cnn
params: {width: 8, num_classes: 10}
inputs: {image: [B, 1, 8, 8]}
graph:
  - {id: conv1, op: conv2d, out: $width, kernel: 3, padding: 1}
  - {id: bn1, op: batch_norm2d}
  - {id: act1, op: relu}
  - {id: conv2, op: conv2d, out: $width, kernel: 3, padding: 1, stride: 2}
  - {id: bn2, op: batch_norm2d}
  - {id: act2, op: relu}
  - {id: flat, op: flatten}
  - {id: head, op: linear, out: $num_classes}
"""


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", nasforge.loads(CNN).graph.inputs["image"], limit=300)


@pytest.fixture(scope="module")
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(5, 4, generator=gen), torch.tensor([0, 2, 1, 1, 0])


def tiny_weights(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights the proxies see: the documented ``torch.manual_seed(seed); spec.build()``."""
    torch.manual_seed(seed)
    gm = nasforge.loads(TINY).build()
    return gm.fc1.weight.detach().double(), gm.fc2.weight.detach().double()


def test_registry_matches_the_objectives() -> None:
    assert set(PROXIES) == set(PROXY_METRICS)


def test_synflow_by_hand(tiny_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """With |W| and an all-ones input, R = 1^T |W2| |W1| 1 and each bias-free linear layer's synaptic
    flow equals R (Tanaka et al.'s conservation law), so SynFlow = 2R."""
    w1, w2 = tiny_weights(seed=5)
    r = (w2.abs() @ w1.abs() @ torch.ones(4, dtype=torch.float64)).sum()
    score = compute_proxies(nasforge.loads(TINY), tiny_batch, ["synflow"], seed=5)["synflow"]
    assert score == pytest.approx(2 * float(r), rel=1e-12)


def test_naswot_by_hand(tiny_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    w1, _ = tiny_weights(seed=5)
    codes = (tiny_batch[0].double() @ w1.T > 0).double()
    kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
    score = compute_proxies(nasforge.loads(TINY), tiny_batch, ["naswot"], seed=5)["naswot"]
    assert math.isfinite(score) and score == pytest.approx(float(torch.logdet(kernel)), rel=1e-12)


def test_snip_and_grad_norm_by_hand(tiny_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Backpropagation of the mean cross-entropy written out for linear-ReLU-linear."""
    w1, w2 = tiny_weights(seed=5)
    x, y = tiny_batch[0].double(), tiny_batch[1]
    pre = x @ w1.T
    hidden = pre.clamp_min(0)
    dz = (torch.softmax(hidden @ w2.T, dim=1) - torch.nn.functional.one_hot(y, 3).double()) / len(x)
    g2 = dz.T @ hidden
    g1 = ((dz @ w2) * (pre > 0)).T @ x
    scores = compute_proxies(nasforge.loads(TINY), tiny_batch, ["snip", "grad_norm"], seed=5)
    assert scores["snip"] == pytest.approx(float((g1 * w1).abs().sum() + (g2 * w2).abs().sum()), rel=1e-5)
    assert scores["grad_norm"] == pytest.approx(float(torch.sqrt(g1.pow(2).sum() + g2.pow(2).sum())), rel=1e-5)


def test_finite_deterministic_and_independent_of_the_request(digits: Dataset) -> None:
    spec = nasforge.loads(CNN)
    proxies = make_proxy_fn(digits, seed=0, batch_size=32)
    names = list(PROXIES)
    first = proxies(spec, names)
    assert all(math.isfinite(v) for v in first.values()) and first == proxies(spec, names)
    assert {n: proxies(spec, [n])[n] for n in reversed(names)} == first
    assert make_proxy_fn(digits, seed=1, batch_size=32)(spec, names) != first


def test_caller_state_is_left_alone(tiny_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    spec = nasforge.loads(TINY)
    images, labels = (t.clone() for t in tiny_batch)
    state = torch.get_rng_state()
    with torch.no_grad():
        scores = compute_proxies(spec, (images, labels), list(PROXIES))
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(images, tiny_batch[0]) and torch.equal(labels, tiny_batch[1])
    assert scores["grad_norm"] > 0


def test_synflow_prefers_the_wider_network(digits: Dataset) -> None:
    proxies = make_proxy_fn(digits, batch_size=16)
    narrow, wide = (proxies(nasforge.loads(CNN, width=w), ["synflow"])["synflow"] for w in (4, 16))
    assert wide > narrow > 0


def test_naswot_prefers_relus_to_the_identity(digits: Dataset) -> None:
    proxies = make_proxy_fn(digits, batch_size=32)
    relu = proxies(nasforge.loads(CNN), ["naswot"])["naswot"]
    identity = proxies(nasforge.loads(CNN.replace("op: relu", "op: identity")), ["naswot"])["naswot"]
    assert math.isfinite(relu) and identity == -math.inf and relu > identity


def test_naswot_cannot_tell_identical_samples_apart(tiny_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = tiny_batch
    twins = (torch.cat([images, images[:1]]), torch.cat([labels, labels[:1]]))
    assert compute_proxies(nasforge.loads(TINY), twins, ["naswot"])["naswot"] == -math.inf


def test_norm_parameters_are_not_connections() -> None:
    torch.manual_seed(0)
    gm = nasforge.loads(CNN).build()
    kept = {id(p) for p in connection_parameters(gm)}
    assert len(kept) == 6 and id(gm.bn1.weight) not in kept and id(gm.conv1.weight) in kept


def test_errors(digits: Dataset, tiny_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(SpecError, match="unknown zero-cost proxy") as err:
        compute_proxies(nasforge.loads(TINY), tiny_batch, ["synflw"])
    assert "'synflow'" in (err.value.hint or "")
    with pytest.raises(SpecError, match="labels do not fit") as err:
        compute_proxies(nasforge.loads(TINY), (tiny_batch[0], tiny_batch[1] + 2), ["snip"])
    assert err.value.expected == "5 int64 labels in [0, 3)"
    with pytest.raises(SpecError, match="not class logits"):
        make_proxy_fn(digits)(nasforge.loads(CNN, num_classes=3), ["snip"])


def test_nas_bench_201_members_through_the_evaluator() -> None:
    space = nasforge.load("specs/spaces/nas_bench_201.yaml", C=4, N=1)
    data = load_dataset("synthetic:64", space.graph.inputs["image"])
    evaluator = Evaluator(proxies=make_proxy_fn(data, batch_size=16))
    sparse = {f"params.edge_{e}": "none" for e in ("1_0", "2_1", "3_1", "3_2")}
    dense, thin = (evaluator.evaluate(space.with_choices(a), list(PROXIES), key=str(a)) for a in ({}, sparse))
    assert all(math.isfinite(v) for v in (*dense.values(), *thin.values()))
    assert dense["synflow"] > thin["synflow"]
