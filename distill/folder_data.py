"""Image-folder datasets: how owners keep their data (`train/<class>/*.png`, `test/<class>/*.jpg`).

Layout: `DIR/train/<class>/<image>` and `DIR/test/<class>/<image>`, PNG or JPEG (anything
Pillow opens). Class names are the train folder's sub-folder names, sorted; that order is the
label order, and it is recorded in the report. Images may be grey or RGB: if any train image
has colour, every image is read as RGB, otherwise as grey. They are resized (bilinear) to a
square `image_size`: declared, or inferred as the most common size among the first images when
that is square. A file Pillow cannot read is skipped and counted, never a crash.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdaudit.core.errors import DataError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: images looked at to infer the channels and size (cheap: dataset_spec runs in the API process)
_PROBE = 64


@dataclass
class FolderData:
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    class_names: tuple[str, ...]
    skipped: int


def _classes(root: Path) -> tuple[str, ...]:
    train = root / "train"
    if not train.is_dir() or not (root / "test").is_dir():
        raise DataError(f"{root}: an image-folder dataset needs train/<class>/ and test/<class>/ sub-folders")
    names = tuple(sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(names) < 2:
        raise DataError(f"{root}/train: found {len(names)} class folder(s); a classifier needs at least 2")
    extra = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in names)
    if extra:
        raise DataError(f"{root}/test has class folders that train has not: {', '.join(extra[:5])}")
    return names


def _files(root: Path, split: str, names: tuple[str, ...]) -> list[tuple[Path, int]]:
    out = []
    for label, name in enumerate(names):
        d = root / split / name
        if d.is_dir():
            out += [(p, label) for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not out:
        raise DataError(f"{root}/{split}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def _probe(files: list[tuple[Path, int]], image_size: int | None) -> tuple[int, int]:
    """(channels, size) from the first readable images."""
    from PIL import Image

    sizes: collections.Counter[tuple[int, int]] = collections.Counter()
    colour = False
    step = max(1, len(files) // _PROBE)
    for path, _ in files[::step][:_PROBE]:
        try:
            with Image.open(path) as im:
                sizes[im.size] += 1
                colour = colour or im.mode not in ("1", "L", "LA", "I", "I;16", "F")
        except Exception:  # noqa: BLE001,S112 - a bad file is counted when the data is loaded
            continue
    if not sizes:
        raise DataError(f"{files[0][0].parent.parent}: none of the images could be read")
    if image_size is None:
        (w, h), _ = sizes.most_common(1)[0]
        if w != h:
            raise DataError(f"the images are {w}x{h}; declare a square size to resize them to (--image-size)")
        image_size = w
    return (3 if colour else 1), image_size


def named_folder(root: Path | None, name: str) -> Path:
    """The image-folder dataset called `name` under an operator's `root` (the service's
    `folder_datasets_dir`). Why a name and never a path: a tenant must not make the workers read
    any folder of theirs, so only a plain sub-folder name (config.py `FolderDatasetName`: no
    separators, no leading dot) that exists under the root is accepted."""
    from pydantic import TypeAdapter, ValidationError

    from kdaudit.distill.config import FolderDatasetName

    if root is None:
        raise InputError("image-folder datasets are off on this server (the operator has not set folder_datasets_dir)")
    try:
        TypeAdapter(FolderDatasetName).validate_python(name)
    except ValidationError:
        raise InputError(f"dataset_name {name[:64]!r} is not a dataset name (letters, digits, '.', '_', '-'; "
                         "a name under the server's dataset folder, never a path)") from None
    path = Path(root) / name
    if not path.is_dir():
        names = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
        raise InputError(f"no image-folder dataset named {name!r} on this server "
                         f"(there are: {', '.join(names[:20]) or 'none'})")
    return path


def folder_spec(root: Path, image_size: int | None = None):  # -> DatasetSpec (import cycle)
    from kdaudit.distill.data import DatasetSpec

    names = _classes(root)
    channels, size = _probe(_files(root, "train", names), image_size)
    return DatasetSpec("folder", len(names), channels, size, crop_pad=max(1, size // 8), hflip=False)


def _read(files: list[tuple[Path, int]], channels: int, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    xs, ys, skipped = [], [], 0
    for path, label in files:
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except Exception:  # noqa: BLE001 - unreadable or truncated: skipped and counted (report)
            skipped += 1
            continue
        xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        ys.append(label)
    if not xs:
        raise DataError(f"{files[0][0].parent.parent}: none of the images could be read")
    return np.stack(xs).astype(np.float32) / 255.0, np.asarray(ys, dtype=np.int64), skipped


def load_folder(root: Path, image_size: int | None = None) -> FolderData:
    names = _classes(root)
    train, test = _files(root, "train", names), _files(root, "test", names)
    channels, size = _probe(train, image_size)
    xtr, ytr, s1 = _read(train, channels, size)
    xte, yte, s2 = _read(test, channels, size)
    missing = [names[c] for c in range(len(names)) if not (ytr == c).any()]
    if missing:
        raise DataError(f"{root}/train: no readable images for class(es) {', '.join(missing[:5])}")
    return FolderData((xtr, ytr, xte, yte), names, s1 + s2)
