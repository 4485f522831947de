"""Datasets as device-resident tensors, with a fixed validation split carved from train.

Why tensors and not DataLoaders: every dataset we audit on fits in memory (digits, MNIST,
Fashion-MNIST, CIFAR-10), and keeping it on the training device avoids a host loader per
student. The split is a pure function of (dataset, val_fraction, fraction, split_seed):
every run of an audit sees the same thief data, and the test split is only ever used for
the reported accuracy, never to pick a checkpoint.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdaudit.core.errors import DataError, InputError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    #: pixels of zero padding for random-crop augmentation
    crop_pad: int
    hflip: bool


SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 10, 1, 8, crop_pad=0, hflip=False),
    "mnist": DatasetSpec("mnist", 10, 1, 28, crop_pad=2, hflip=False),
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, 28, crop_pad=2, hflip=True),
    "cifar10": DatasetSpec("cifar10", 10, 3, 32, crop_pad=4, hflip=True),
    "cifar100": DatasetSpec("cifar100", 100, 3, 32, crop_pad=4, hflip=True),
    "cifar100-coarse": DatasetSpec("cifar100-coarse", 20, 3, 32, crop_pad=4, hflip=True),
}
#: datasets read from a path the user gives (`dataset_path`): a .npz, or a folder of images
PATH_DATASETS: tuple[str, ...] = ("npz", "folder")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def dataset_spec(name: str, dataset_path: str | Path | None = None, image_size: int | None = None) -> DatasetSpec:
    """Shape facts for a dataset name (for `npz`, read from the file's arrays; for `folder`, from the tree)."""
    if name == "folder":
        from kdaudit.distill.folder_data import folder_spec

        if dataset_path is None:
            raise InputError("dataset 'folder' needs a dataset path (a folder with train/<class>/ and test/<class>/)")
        return folder_spec(Path(dataset_path), image_size)
    if name == "npz":
        if dataset_path is None:
            raise InputError("dataset 'npz' needs a dataset path (a .npz with arrays x and y)")
        x, y, _, _ = _read_user_npz(Path(dataset_path))
        return _npz_spec(x, y)
    if name not in SPECS:
        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join([*SPECS, *PATH_DATASETS])}")
    return SPECS[name]


@dataclass
class Splits:
    spec: DatasetSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    fraction: float
    #: sha256 over the split's index arrays: two audits with equal hashes trained on the same images
    split_sha256: str
    #: per-channel train mean/std (of pixels in [0, 1]) every tensor here was standardised with
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: class names in label order, where the dataset has them (image folders, CIFAR)
    class_names: tuple[str, ...] | None = None
    #: image files that could not be read and were left out (image folders)
    skipped_files: int = 0

    def to(self, device: torch.device | str) -> Splits:
        kw = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return dataclasses.replace(self, **kw)


def channel_stats(x: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of an (N, C, H, W) array, accumulated in float64.

    Why not `x.mean(axis=(0, 2, 3))`: on a float32 array numpy accumulates in float32, and
    over CIFAR-10's 51.2 M values per channel the running sum saturates at 2^24 (every
    channel's mean came out 0.32768). Two passes over chunks, each summed in float64.
    """
    n, c = x.shape[0], x.shape[1]
    count = n * x.shape[2] * x.shape[3]
    total = np.zeros(c, dtype=np.float64)
    for i in range(0, n, chunk):
        total += x[i : i + chunk].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / count
    sq = np.zeros(c, dtype=np.float64)
    for i in range(0, n, chunk):
        d = x[i : i + chunk].astype(np.float64) - mean.reshape(1, c, 1, 1)
        sq += np.einsum("nchw,nchw->c", d, d)
    return mean, np.sqrt(sq / count)


def default_data_roots() -> list[Path]:
    """Where datasets are looked for when no --data-root is given, in order."""
    roots = []
    if os.environ.get("KDAUDIT_DATASETS_DIR"):
        roots.append(Path(os.environ["KDAUDIT_DATASETS_DIR"]))
    repo = Path(__file__).resolve().parent.parent
    roots += [repo.parent / "shared" / "datasets", repo / "shared" / "datasets", Path.cwd() / "shared" / "datasets"]
    return roots


def _find_file(filename: str, data_root: Path | None) -> Path:
    candidates = [data_root] if data_root is not None else default_data_roots()
    for root in candidates:
        if (root / filename).is_file():
            return root / filename
    where = ", ".join(str(c) for c in candidates)
    raise DataError(f"{filename} not found (looked in: {where}); pass --data-root or set KDAUDIT_DATASETS_DIR")


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    # a fixed 1200/597 train/test split (DESIGN.md's small-scale evidence uses the same sizes)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=597, stratify=y, random_state=0)
    return xtr, ytr, xte, yte


def _load_mnist(data_root: Path | None) -> tuple[np.ndarray, ...]:
    path = _find_file("mnist.npz", data_root)
    with np.load(path, allow_pickle=False) as d:
        return (
            (d["x_train"].astype(np.float32) / 255.0)[:, None],
            d["y_train"].astype(np.int64),
            (d["x_test"].astype(np.float32) / 255.0)[:, None],
            d["y_test"].astype(np.int64),
        )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    _, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if dtype != 0x08:
        raise DataError(f"{path}: unsupported IDX dtype {dtype:#x}")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion(data_root: Path | None) -> tuple[np.ndarray, ...]:
    root = data_root if data_root is not None and (data_root / "train-images-idx3-ubyte.gz").exists() else FASHION_MNIST_DIR
    if not (root / "train-images-idx3-ubyte.gz").exists():
        raise DataError(f"Fashion-MNIST not found in {root}; install Debian's dataset-fashion-mnist package")
    return (
        (_read_idx(root / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0)[:, None],
        _read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64),
        (_read_idx(root / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0)[:, None],
        _read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64),
    )


#: dataset -> (file, label array suffix): the JPEG-in-npz layout of ../shared/datasets
_JPEG_NPZ = {
    "cifar10": ("cifar10_jpeg.npz", ""),
    "cifar100": ("cifar100_jpeg_q75.npz", ""),
    "cifar100-coarse": ("cifar100_jpeg_q75.npz", "_coarse"),
}


def _load_jpeg_npz(name: str, data_root: Path | None) -> tuple[np.ndarray, ...]:
    """CIFAR-10 / CIFAR-100 (fine, or coarse labels): JPEG bodies behind one shared header."""
    from PIL import Image

    filename, labels = _JPEG_NPZ[name]
    path = _find_file(filename, data_root)
    with np.load(path, allow_pickle=False) as d:
        header = d["jpeg_header"].tobytes()

        def decode(split: str) -> np.ndarray:
            buf, off = d[f"x_{split}_data"], d[f"x_{split}_offsets"]
            imgs = [
                np.asarray(Image.open(io.BytesIO(header + buf[off[i] : off[i + 1]].tobytes())).convert("RGB"))
                for i in range(len(off) - 1)
            ]
            return np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0

        return (decode("train"), d[f"y_train{labels}"].astype(np.int64), decode("test"),
                d[f"y_test{labels}"].astype(np.int64))


def _read_user_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise DataError(f"{path}: a user dataset needs arrays 'x' and 'y' (found: {', '.join(d.files)})")
            x, y = d["x"], d["y"]
            xt = d["x_test"] if "x_test" in d else None
            yt = d["y_test"] if "y_test" in d else None
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz without pickles ({e})") from None
    return x, y, xt, yt


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
        raise DataError(f"{path}: x must be (N,H,W), (N,H,W,C) or (N,C,H,W) with square images and 1 or 3 channels")
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def _npz_spec(x: np.ndarray, y: np.ndarray) -> DatasetSpec:
    x = _to_nchw(x, Path("dataset"))
    ncls = int(np.max(y)) + 1
    return DatasetSpec("npz", ncls, x.shape[1], x.shape[2], crop_pad=max(1, x.shape[2] // 8), hflip=False)


def _load_npz(path: Path) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    x, y, xt, yt = _read_user_npz(path)
    x = _to_nchw(x, path)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} rows but y has {len(y)}")
    if y.min() < 0:
        raise DataError(f"{path}: labels must be 0..C-1")
    if xt is None:
        x, xt, y, yt = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    else:
        xt = _to_nchw(xt, path)
        yt = np.asarray(yt).astype(np.int64).reshape(-1)
    return x, y, xt, yt


def _stratified_subset(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, rest) with `share` of each class in keep (at least one per class)."""
    rng = np.random.default_rng(seed)
    keep, rest = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = max(1, int(round(share * len(idx))))
        keep.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(rest))


def load_splits(
    name: str,
    *,
    data_root: Path | None = None,
    dataset_path: str | Path | None = None,
    val_fraction: float = 0.1,
    fraction: float = 1.0,
    split_seed: int = 0,
    image_size: int | None = None,
) -> Splits:
    """Load a dataset, standardise it with train statistics, carve val (and the thief's fraction)."""
    class_names: tuple[str, ...] | None = None
    skipped = 0
    if name == "digits":
        xtr, ytr, xte, yte = _load_digits()
    elif name == "mnist":
        xtr, ytr, xte, yte = _load_mnist(data_root)
    elif name == "fashion-mnist":
        xtr, ytr, xte, yte = _load_fashion(data_root)
    elif name in _JPEG_NPZ:
        xtr, ytr, xte, yte = _load_jpeg_npz(name, data_root)
    elif name == "folder":
        from kdaudit.distill.folder_data import load_folder

        if dataset_path is None:
            raise InputError("dataset 'folder' needs a dataset path")
        folder = load_folder(Path(dataset_path), image_size)
        xtr, ytr, xte, yte = folder.arrays
        class_names, skipped = folder.class_names, folder.skipped
    elif name == "npz":
        if dataset_path is None:
            raise InputError("dataset 'npz' needs a dataset path")
        xtr, ytr, xte, yte = _load_npz(Path(dataset_path))
    else:
        dataset_spec(name)  # raises the helpful error
        raise AssertionError
    spec = SPECS.get(name) or _npz_spec(xtr, ytr)
    if name == "folder":
        spec = dataclasses.replace(spec, name="folder", num_classes=len(class_names or ()))

    val_idx, train_idx = _stratified_subset(ytr, val_fraction, seed=split_seed)
    if fraction < 1.0:
        kept, _ = _stratified_subset(ytr[train_idx], fraction, seed=split_seed + 1)
        train_idx = train_idx[kept]
    digest = hashlib.sha256()
    for arr in (train_idx, val_idx):
        digest.update(np.ascontiguousarray(arr, dtype=np.int64).tobytes())

    # The teacher's preprocessing contract: pixels in [0, 1], then per-channel standardisation
    # with the statistics of the dataset's *full* training split. It must not depend on the
    # thief's fraction or the validation split, or the teacher would see shifted inputs.
    # Accumulated in float64 (channel_stats): float32 sums saturate on CIFAR-sized sets.
    mean64, std64 = channel_stats(xtr)
    std64 = std64 + 1e-6
    mean = mean64.astype(np.float32).reshape(1, -1, 1, 1)
    std = std64.astype(np.float32).reshape(1, -1, 1, 1)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray((a - mean) / std, dtype=np.float32))

    return Splits(
        spec=spec,
        x_train=t(xtr[train_idx]),
        y_train=torch.from_numpy(ytr[train_idx]),
        x_val=t(xtr[val_idx]),
        y_val=torch.from_numpy(ytr[val_idx]),
        x_test=t(xte),
        y_test=torch.from_numpy(yte),
        fraction=fraction,
        split_sha256=digest.hexdigest(),
        mean=tuple(float(v) for v in mean64),
        std=tuple(float(v) for v in std64),
        class_names=class_names,
        skipped_files=skipped,
    )
