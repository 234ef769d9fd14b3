"""Datasets for accuracy objectives and zero-cost proxies, adapted to a spec's input type.

A search measures accuracy on whatever images the researcher has: the 8x8 digits bundled with
scikit-learn (no network needed, the default for CPU searches), a seeded synthetic task, arrays in an
``.npz``, an ImageFolder tree, or a local CIFAR-10 copy. Every source becomes float images
``[N, C, H, W]`` that the spec's input ``[B, C, H, W]`` takes: resized (bilinear) to its ``H, W``, grey
replicated to colour or colour averaged to grey, normalized per channel with the training split's
statistics (so validation data never leaks into them), and split by a seeded permutation.

CIFAR-10's python batches are pickles; they are read with :class:`RestrictedUnpickler`, which builds only
dicts, lists, strings, bytes, ints and numpy arrays, so a doctored file cannot run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from nasforge.errors import Location, SpecError, did_you_mean
from nasforge.types import FLOAT_DTYPES, Sym, TensorType

WHERE = Location("--dataset")
SYNTHETIC_SIZE = 2000
SYNTHETIC_CLASSES = 10
SYNTHETIC_SEED = 20_240_601
"""The synthetic task's content is fixed by its size alone; ``seed`` only changes the split, as for
every other source, so ``synthetic:N`` names one task."""
SOURCES = {
    "digits": "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes)",
    "synthetic[:N]": f"a seeded synthetic task of N images (default {SYNTHETIC_SIZE}), 10 classes",
    "npz:PATH": "arrays x (images) and y (integer labels) in a .npz file",
    "folder:PATH": "one subfolder of PNG/JPEG images per class (needs Pillow)",
    "cifar10:PATH": "a local CIFAR-10 python-format copy (data_batch_1..5)",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RESIZE_CHUNK = 1024
"""Images resized per interpolate call: bounds the float copy of a large dataset."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation splits of float images ``[N, C, H, W]`` with int64 labels in ``[0, num_classes)``."""

    train: TensorDataset
    val: TensorDataset
    num_classes: int
    name: str
    description: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample, ``(C, H, W)``: what a spec's input must be past its batch axis."""
        return tuple(self.train.tensors[0].shape[1:])


@dataclass(frozen=True)
class _Raw:
    """A source's images ``[N, c, h, w]`` (uint8 in [0, 255], or float) and labels, before adaptation."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    about: str


def image_shape(input_type: TensorType) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image input ``[B, C, H, W]``; a SpecError for inputs that cannot take images."""
    shape = input_type.shape
    fits = (len(shape) == 4 and isinstance(shape[0], Sym) and all(isinstance(d, int) for d in shape[1:])
            and input_type.dtype in FLOAT_DTYPES)
    if not fits:
        raise SpecError("the spec's input cannot take images", location=WHERE,
                        expected="a floating input [B, C, H, W] (symbolic batch, fixed C, H, W)",
                        found=str(input_type))
    _, channels, height, width = shape
    return int(channels), int(height), int(width)


def load_dataset(name: str, input_type: TensorType, *, seed: int = 0, val_fraction: float = 0.2,
                 limit: int | None = None) -> Dataset:
    """Load ``name`` (``digits``, ``synthetic[:N]``, ``npz:PATH``, ``folder:PATH``, ``cifar10:PATH``) as
    images for ``input_type``; ``limit`` keeps a seeded random subset before the split, ``val_fraction``
    of which (at least one sample) is held out for validation."""
    channels, height, width = image_shape(input_type)
    if not 0 < val_fraction < 1:
        raise SpecError("the validation fraction must lie strictly between 0 and 1", location=WHERE,
                        expected="0 < val_fraction < 1", found=repr(val_fraction))
    if limit is not None and limit < 2:
        raise SpecError("a dataset limit must keep a training and a validation sample", location=WHERE,
                        expected="limit >= 2", found=repr(limit))
    raw = _load_raw(name, channels, (height, width))
    order = torch.randperm(len(raw.labels), generator=torch.Generator().manual_seed(seed))[:limit]
    if len(order) < 2:
        raise SpecError("the dataset is too small to split", location=WHERE, expected="at least 2 samples",
                        found=f"{len(order)} in {name}")
    images = _adapt(raw.images[order], channels, (height, width))
    labels = raw.labels[order]
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    train_x, val_x = images[n_val:], images[:n_val]
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)  # a constant channel stays finite
    dtype = getattr(torch, input_type.dtype)
    train = TensorDataset(((train_x - mean) / std).to(dtype), labels[n_val:])
    val = TensorDataset(((val_x - mean) / std).to(dtype), labels[:n_val])
    description = (f"{name}: {raw.about}; as {channels}x{height}x{width}, {len(order) - n_val} train / "
                   f"{n_val} val (seed {seed})")
    return Dataset(train, val, raw.num_classes, name, description)


def _load_raw(name: str, channels: int, size: tuple[int, int]) -> _Raw:
    kind, _, arg = name.partition(":")
    loaders: dict[str, Callable[[], _Raw]] = {
        "digits": _digits,
        "synthetic": lambda: _synthetic(_synthetic_size(arg)),
        "npz": lambda: _npz(_existing(arg, name)),
        "folder": lambda: _folder(_existing(arg, name), channels, size),
        "cifar10": lambda: _cifar10(_existing(arg, name)),
    }
    if kind not in loaders or (kind == "digits" and arg):
        raise SpecError(f"unknown dataset {name!r}", location=WHERE, expected=", ".join(SOURCES),
                        found=repr(name), hint=did_you_mean(kind, list(loaders)))
    raw = loaders[kind]()
    if raw.num_classes < 2:
        raise SpecError("a classification dataset needs at least two classes", location=WHERE,
                        expected=">= 2 classes", found=f"{raw.num_classes} in {name}")
    return raw


def _synthetic_size(arg: str) -> int:
    if not arg:
        return SYNTHETIC_SIZE
    if not arg.isdigit() or int(arg) < SYNTHETIC_CLASSES:
        raise SpecError("synthetic:N takes a sample count", location=WHERE,
                        expected=f"an integer N >= {SYNTHETIC_CLASSES}", found=repr(arg))
    return int(arg)


def _existing(arg: str, name: str) -> Path:
    path = Path(arg).expanduser()
    if not arg or not path.exists():
        raise SpecError(f"dataset path not found: {arg!r}", location=WHERE,
                        expected="an existing file or folder after the colon", found=name)
    return path


def _adapt(images: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """Float images with ``channels`` channels at ``size``: uint8 scaled to [0, 1], grey replicated,
    colour averaged to grey, then bilinear resizing (antialiased when shrinking) in chunks."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    found = x.shape[1]
    if found != channels:
        if found == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise SpecError("the dataset's channels do not map onto the spec's input", location=WHERE,
                            expected=f"images with 1 or {channels} channels (or a 1-channel input)",
                            found=f"{found} channels")
    if tuple(x.shape[2:]) == size:
        return x.contiguous()
    return torch.cat([F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=True)
                      for chunk in x.split(RESIZE_CHUNK)])


# -- sources --------------------------------------------------------------------------------------------
def _digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)  # pixel values are 0..16
    return _Raw(images, torch.from_numpy(bunch.target).long(), 10,
                "1797 8x8 grey handwritten digits (scikit-learn), 10 classes")


def _synthetic(n: int) -> _Raw:
    """Ten smooth colour patterns (random 4x4 fields upsampled to 16x16), each sample a class's pattern
    with a random contrast, shifted by up to two pixels, under Gaussian noise: learnable by small
    convolutional networks, not by chance."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    coarse = torch.randn(SYNTHETIC_CLASSES, 3, 4, 4, generator=gen)
    patterns = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    labels = (torch.arange(n) % SYNTHETIC_CLASSES)[torch.randperm(n, generator=gen)]
    contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=gen)
    shifts = torch.randint(-2, 3, (n, 2), generator=gen)
    images = patterns[labels] * contrast
    images = torch.stack([img.roll(tuple(s.tolist()), dims=(1, 2)) for img, s in zip(images, shifts)])
    images = images + 0.8 * torch.randn(images.shape, generator=gen)
    return _Raw(images, labels, SYNTHETIC_CLASSES, f"{n} synthetic 3x16x16 pattern images, 10 classes")


def _npz(path: Path) -> _Raw:
    """Arrays ``x`` as ``[N, H, W]``, ``[N, C, H, W]`` or channels-last ``[N, H, W, C]`` (recognized when
    the last axis has 1, 3 or 4 entries and the second does not), uint8 or float; ``y`` integer labels."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"a single {type(loaded).__name__}, not an archive of named arrays")
        with loaded:
            names = sorted(loaded.files)
            arrays = {k: loaded[k] for k in ("x", "y") if k in names}
    except (OSError, ValueError) as err:
        raise SpecError("cannot read the npz dataset", location=WHERE,
                        expected="a .npz of plain numeric arrays (no pickled objects)",
                        found=f"{path}: {err}") from None
    if len(arrays) < 2:
        raise SpecError("an npz dataset holds arrays x and y", location=WHERE,
                        expected="arrays x (images) and y (labels)", found=f"arrays {names} in {path}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise SpecError("npz images must be uint8 or float arrays [N, H, W], [N, C, H, W] or [N, H, W, C]",
                        location=WHERE, expected="a 3- or 4-axis uint8/float array x",
                        found=f"x {x.dtype} {list(x.shape)}")
    labels = _labels(y, len(x), str(path))
    return _Raw(torch.from_numpy(np.ascontiguousarray(x)), labels, int(labels.max()) + 1,
                f"{len(x)} images {'x'.join(map(str, x.shape[1:]))} from {path.name}")


def _labels(y: Any, n: int, source: str) -> torch.Tensor:
    """Integer class labels in ``[0, K)``, one per image."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n or n == 0 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        shape = f"{y.dtype} {list(y.shape)}" + (f", min {y.min()}" if y.size and y.dtype.kind in "iu" else "")
        raise SpecError("labels must be one non-negative integer per image", location=WHERE,
                        expected=f"{n} integer labels >= 0" if n else "at least one image",
                        found=f"{shape} in {source}")
    return torch.from_numpy(y.astype(np.int64))


def _folder(path: Path, channels: int, size: tuple[int, int]) -> _Raw:
    """ImageFolder layout: class names are the sorted subfolder names; each image is decoded with
    Pillow (grey for a 1-channel input, RGB otherwise) and resized bilinearly to ``size`` as it is read,
    so images of different sizes stack and memory stays at uint8."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise SpecError("loading an image folder needs Pillow", location=WHERE,
                        expected="the PIL module (Pillow) installed", found="no PIL module",
                        hint="pip install pillow") from None
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {c.name: sorted(f for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for c in classes}
    empty = [name for name, found in files.items() if not found]
    if not classes or empty:
        raise SpecError("an image folder holds one subfolder of PNG/JPEG images per class", location=WHERE,
                        expected="PATH/<class>/<image>.png|jpg for every class",
                        found=f"classes without images: {empty}" if empty else f"no subfolders in {path}")
    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, (_, class_files) in enumerate(files.items()):
        for file in class_files:
            try:
                with Image.open(file) as img:
                    pixels = np.asarray(img.convert(mode).resize(size[::-1], Image.Resampling.BILINEAR))
            except (OSError, UnidentifiedImageError) as err:
                raise SpecError("cannot decode an image", location=WHERE, expected="a PNG or JPEG image",
                                found=f"{file}: {err}") from None
            images.append(pixels.reshape(*size, -1).transpose(2, 0, 1))
            labels.append(label)
    shown = ", ".join(files) if len(files) <= 5 else ", ".join(list(files)[:5]) + ", ..."
    return _Raw(torch.from_numpy(np.stack(images)), torch.tensor(labels), len(files),
                f"{len(labels)} images in {len(files)} classes ({shown}) from {path}")


def _cifar10(path: Path) -> _Raw:
    """The training batches ``data_batch_1..5`` of CIFAR-10's python version (PATH is the
    ``cifar-10-batches-py`` folder or its parent). ``test_batch`` is deliberately not read: the search
    validates on a split of the training set, keeping the test set for reporting the final network."""
    root = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    batches = [f for k in range(1, 6) if (f := root / f"data_batch_{k}").is_file()]
    if not batches:
        raise SpecError("no CIFAR-10 training batches found", location=WHERE,
                        expected="data_batch_1 .. data_batch_5 (python version)", found=f"nothing in {root}")
    images, labels = [], []
    for file in batches:
        batch = _cifar_batch(file)
        images.append(batch["data"].reshape(-1, 3, 32, 32))
        labels.append(_labels(batch["labels"], len(batch["data"]), str(file)))
    return _Raw(torch.from_numpy(np.concatenate(images)), torch.cat(labels), 10,
                f"{sum(len(x) for x in images)} CIFAR-10 training images 3x32x32 from {len(batches)} batches")


def _cifar_batch(file: Path) -> dict[str, Any]:
    with file.open("rb") as f:
        try:
            batch = RestrictedUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
            raise SpecError("not a CIFAR-10 python batch (or one holding more than plain data)", location=WHERE,
                            expected="a pickle of dicts, lists, strings, ints and numpy arrays",
                            found=f"{file}: {err}") from None
    if not isinstance(batch, dict):
        raise SpecError("a CIFAR-10 batch is a dict", location=WHERE, expected="dict with data and labels",
                        found=f"{type(batch).__name__} in {file}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = batch.get("data")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32 and "labels" in batch):
        found = f"data {data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else f"keys {sorted(batch)}"
        raise SpecError("malformed CIFAR-10 batch", location=WHERE,
                        expected="data: uint8 [N, 3072] and labels: N ints", found=f"{found} in {file}")
    return batch


_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
"""numpy's array reconstructor, whichever module this numpy version keeps it in."""
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, cls.__name__): cls for module in ("builtins", "__builtin__") for cls in (dict, list, bytes, str, int)},
    **{(module, "_reconstruct"): _RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global but plain containers and numpy array reconstruction.

    A pickle is a program: any ``module.name`` it names is imported and may be called. CIFAR-10's
    batches need only dicts, lists, strings, ints and numpy arrays (``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype``), so everything else is refused before it is looked up.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is allowed)") from None
