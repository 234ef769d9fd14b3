"""Datasets: every source, adaptation to the spec's input type, seeded splits, safe loading, clear errors."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nasforge.errors import SpecError
from nasforge.search.data import RestrictedUnpickler, image_shape, load_dataset
from nasforge.types import Sym, TensorType

B = Sym.of("B")


def image(c: int, h: int, w: int, dtype: str = "float32") -> TensorType:
    return TensorType((B, c, h, w), dtype)


def everything(ds) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([ds.train.tensors[0], ds.val.tensors[0]]), torch.cat([ds.train.tensors[1], ds.val.tensors[1]])


def test_digits_split_and_normalization() -> None:
    ds = load_dataset("digits", image(1, 8, 8))
    x, y = ds.train.tensors
    assert (len(ds.train), len(ds.val)) == (1438, 359) and ds.num_classes == 10
    assert x.shape[1:] == (1, 8, 8) and ds.input_shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # normalized with train stats
    assert "1797" in ds.description and "1438 train / 359 val" in ds.description


def test_split_is_deterministic_by_seed() -> None:
    a, b, c = (load_dataset("synthetic:100", image(3, 16, 16), seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.val.tensors[1], c.val.tensors[1])
    # the seed moves the split, not the task: the same 100 samples up to normalization
    assert sorted(everything(a)[1].tolist()) == sorted(everything(c)[1].tolist())


def test_limit_and_val_fraction() -> None:
    ds = load_dataset("digits", image(1, 8, 8), limit=100, val_fraction=0.25)
    assert (len(ds.train), len(ds.val)) == (75, 25)
    for bad in ({"val_fraction": 0.0}, {"val_fraction": 1.0}, {"limit": 1}):
        with pytest.raises(SpecError):
            load_dataset("digits", image(1, 8, 8), **bad)


def test_grey_is_replicated_and_resized() -> None:
    ds = load_dataset("digits", image(3, 32, 32), limit=50)
    x = ds.train.tensors[0]
    assert x.shape[1:] == (3, 32, 32)
    assert torch.allclose(x[:, 0], x[:, 1]) and torch.allclose(x[:, 1], x[:, 2])


def test_colour_is_averaged_to_grey_and_dtype_follows_the_input() -> None:
    ds = load_dataset("synthetic:50", image(1, 8, 8, "float64"))
    assert ds.train.tensors[0].shape[1:] == (1, 8, 8) and ds.train.tensors[0].dtype == torch.float64


def test_synthetic_is_learnable() -> None:
    """A nearest-class-mean classifier beats chance by far: the patterns carry the label."""
    ds = load_dataset("synthetic:500", image(3, 16, 16))
    (x, y), (vx, vy) = ds.train.tensors, ds.val.tensors
    means = torch.stack([x[y == k].mean(0) for k in range(10)]).flatten(1)
    predicted = torch.cdist(vx.flatten(1), means).argmin(1)
    assert float((predicted == vy).float().mean()) > 0.6
    assert len(everything(load_dataset("synthetic", image(3, 16, 16)))[1]) == 2000


@pytest.mark.parametrize("input_type", [TensorType((B, 16), "int64"), TensorType((B, 1, 8, 8), "int64"),
                                        TensorType((B, 8, 8)), TensorType((4, 1, 8, 8))])
def test_inputs_that_cannot_take_images(input_type: TensorType) -> None:
    with pytest.raises(SpecError, match="cannot take images") as err:
        load_dataset("digits", input_type)
    assert err.value.expected and "[B, C, H, W]" in err.value.expected and err.value.found == str(input_type)
    assert image_shape(image(3, 4, 5)) == (3, 4, 5)


@pytest.mark.parametrize("name, message", [("digit", "unknown dataset"), ("digits:x", "unknown dataset"),
                                           ("synthetic:abc", "sample count"), ("npz:/no/such.npz", "not found"),
                                           ("cifar10:", "not found")])
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        load_dataset(name, image(1, 8, 8))
    if name == "digit":
        assert "'digits'" in (err.value.hint or "")


def test_npz_channels_last_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.integers(0, 256, (30, 12, 12, 3), dtype=np.uint8), y=np.arange(30) % 3)
    ds = load_dataset(f"npz:{path}", image(3, 8, 8))
    assert ds.num_classes == 3 and ds.train.tensors[0].shape[1:] == (3, 8, 8) and len(everything(ds)[1]) == 30


def test_npz_grey_float(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((20, 8, 8)), y=np.arange(20) % 2)
    assert load_dataset(f"npz:{path}", image(1, 8, 8)).input_shape == (1, 8, 8)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 8, 8))}, "arrays x and y"),
    ({"x": np.zeros((4, 8, 8)), "y": np.arange(3)}, "one non-negative integer per image"),
    ({"x": np.zeros((4, 8, 8)), "y": np.array([0, 1, -1, 0])}, "one non-negative integer per image"),
    ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4)}, "one non-negative integer per image"),
    ({"x": np.zeros((4, 8)), "y": np.arange(4)}, "uint8 or float arrays"),
    ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4, dtype=int)}, "at least two classes"),
    ({"x": np.array([None] * 4, dtype=object), "y": np.arange(4)}, "cannot read"),
])
def test_malformed_npz(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(SpecError, match=message):
        load_dataset(f"npz:{path}", image(1, 8, 8))


def test_image_folder(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    for k, (name, colour) in enumerate([("cat", (255, 0, 0)), ("dog", (0, 0, 255))]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (10 + i + k, 12), colour).save(tmp_path / name / f"{i}.png")
            Image.new("L", (9, 9), 40 * i).save(tmp_path / name / f"{i}.jpg")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}", image(3, 8, 8), val_fraction=0.25)
    x, y = everything(ds)
    assert ds.num_classes == 2 and x.shape == (12, 3, 8, 8) and sorted(y.tolist()) == [0] * 6 + [1] * 6
    assert "cat, dog" in ds.description
    assert load_dataset(f"folder:{tmp_path}", image(1, 4, 4)).input_shape == (1, 4, 4)


def test_image_folder_errors(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "0.png")
    with pytest.raises(SpecError, match="one subfolder") as err:
        load_dataset(f"folder:{tmp_path}", image(3, 8, 8))
    assert "['b']" in (err.value.found or "")
    (tmp_path / "b" / "0.png").write_bytes(b"not a png")
    with pytest.raises(SpecError, match="cannot decode"):
        load_dataset(f"folder:{tmp_path}", image(3, 8, 8))


def test_image_folder_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL...` raise ImportError
    with pytest.raises(SpecError, match="needs Pillow") as err:
        load_dataset(f"folder:{tmp_path}", image(3, 8, 8))
    assert err.value.hint == "pip install pillow"


def write_cifar_batch(path: Path, n: int, offset: int = 0, numpy_core: bool = False) -> None:
    """A batch in CIFAR-10's layout (bytes keys, uint8 [N, 3072] data, list labels). Protocol 3 names
    globals as plain text, so the test can also spell numpy's module as the real files do (numpy.core)."""
    rng = np.random.default_rng(offset)
    batch = {b"batch_label": b"training batch", b"labels": [(offset + i) % 10 for i in range(n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
    data = pickle.dumps(batch, protocol=3)
    if numpy_core:
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        assert b"numpy.core.multiarray\n" in data
    path.write_bytes(data)


def test_cifar10_batches(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    write_cifar_batch(root / "data_batch_1", 20)
    write_cifar_batch(root / "data_batch_2", 20, offset=3, numpy_core=True)
    write_cifar_batch(root / "test_batch", 7)
    ds = load_dataset(f"cifar10:{tmp_path}", image(3, 32, 32))
    x, y = everything(ds)
    assert ds.num_classes == 10 and x.shape == (40, 3, 32, 32) and "2 batches" in ds.description
    assert load_dataset(f"cifar10:{root}", image(1, 16, 16), limit=10).input_shape == (1, 16, 16)


class Payload:
    """A pickle that would create a directory when loaded by an unrestricted unpickler."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        import os

        return os.mkdir, (str(self.target),)


def test_cifar10_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": []}))
    with pytest.raises(SpecError, match="more than plain data") as err:
        load_dataset(f"cifar10:{tmp_path}", image(3, 32, 32))
    assert "refusing to load" in (err.value.found or "") and not marker.exists()


def test_cifar10_malformed(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no CIFAR-10 training batches"):
        load_dataset(f"cifar10:{tmp_path}", image(3, 32, 32))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(SpecError, match="malformed CIFAR-10 batch"):
        load_dataset(f"cifar10:{tmp_path}", image(3, 32, 32))


def test_restricted_unpickler_builds_plain_data() -> None:
    import io

    data = {"a": [1, "two", b"three"], "arr": np.arange(6, dtype=np.float32).reshape(2, 3)}
    loaded = RestrictedUnpickler(io.BytesIO(pickle.dumps(data))).load()
    assert loaded["a"] == data["a"] and np.array_equal(loaded["arr"], data["arr"])
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        from collections import OrderedDict

        RestrictedUnpickler(io.BytesIO(pickle.dumps(OrderedDict(a=1)))).load()
