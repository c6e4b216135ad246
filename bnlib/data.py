"""Datasets, outlier (canary) injection and membership splits.

Images are float32 tensors of shape (N, C, H, W) in [0, 1]; labels are int64 tensors of shape (N,).
Nothing here downloads unless ``allow_download=True`` is passed explicitly (torchvision, online users).

Readers for the on-disk formats are our own, small and tested on files the tests write:
    fashion_mnist, mnist -- IDX files (``*-images-idx3-ubyte[.gz]``, ``*-labels-idx1-ubyte[.gz]``)
    cifar10              -- python pickle batches in ``cifar-10-batches-py/``
    svhn                 -- MATLAB files ``train_32x32.mat`` / ``test_32x32.mat``
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_HOME = Path(os.environ.get("BNLIB_DATA", Path.home() / ".cache" / "bnlib" / "data"))

# (channels, height, width, classes) of each in-distribution dataset.
DATASET_SHAPES = {
    "fashion_mnist": (1, 28, 28, 10),
    "mnist": (1, 28, 28, 10),
    "cifar10": (3, 32, 32, 10),
    "svhn": (3, 32, 32, 10),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DataNotFoundError(FileNotFoundError):
    """Raised with the places searched and how to provide the files."""


# ----------------------------------------------------------------------------- readers (file formats)

def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): magic 0x0000 08 NDIM, big-endian int32 dims, uint8 data."""
    with _open_maybe_gz(Path(path)) as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number {raw[:4]!r}).")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} bytes.")
    return data.reshape(tuple(int(d) for d in dims)).copy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip if the name ends in .gz). Used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.exists() and labels.exists():
            return images, labels
    return None


def _load_idx_dataset(candidates: list[Path], split: str):
    for folder in candidates:
        pair = _find_idx_pair(folder, split)
        if pair:
            images, labels = read_idx(pair[0]), read_idx(pair[1])
            return images[:, None, :, :], labels
    return None


def _load_cifar10(candidates: list[Path], split: str):
    for folder in candidates:
        batch_dir = folder / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        if all((batch_dir / n).exists() for n in names):
            images, labels = [], []
            for name in names:
                with open(batch_dir / name, "rb") as handle:
                    entry = pickle.load(handle, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.append(np.asarray(entry["labels"], dtype=np.int64))
            return np.concatenate(images), np.concatenate(labels)
    return None


def _load_svhn(candidates: list[Path], split: str):
    from scipy.io import loadmat

    for folder in candidates:
        path = folder / f"{split}_32x32.mat"
        if path.exists():
            mat = loadmat(path)
            images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
            labels = mat["y"].astype(np.int64).reshape(-1)
            labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
            return images, labels
    return None


def _candidate_folders(name: str, data_root: str | os.PathLike | None) -> list[Path]:
    """Where ``name`` is looked for: inside ``data_root`` alone when one is given (a folder the user names
    is never silently replaced by another), else ``$BNLIB_DATA`` and the standard places."""
    roots = [Path(data_root)] if data_root else [DEFAULT_DATA_HOME]
    sub = {"fashion_mnist": ["FashionMNIST/raw", "fashion-mnist", "fashion_mnist"],
           "mnist": ["MNIST/raw", "mnist"], "cifar10": [""], "svhn": ["", "svhn"]}[name]
    folders = [root / s if s else root for root in roots for s in [""] + sub]
    if name == "fashion_mnist" and not data_root:
        folders.append(DEBIAN_FASHION_MNIST)
    return list(dict.fromkeys(folders))


def _files_present(name: str, folder: Path, split: str) -> bool:
    """Whether ``folder`` holds the files of ``name``'s ``split`` (names only; nothing is read)."""
    if name in ("fashion_mnist", "mnist"):
        return _find_idx_pair(folder, split) is not None
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return all((folder / "cifar-10-batches-py" / n).exists() for n in names)
    return (folder / f"{split}_32x32.mat").exists()


def check_data_root(name: str, data_root: str | os.PathLike | None, allow_download: bool = False) -> None:
    """Fail fast, before any work, when a given ``data_root`` does not exist or holds none of the dataset's
    files (both splits); with ``allow_download`` a missing folder or missing files are fetched later."""
    if not data_root or allow_download:
        return
    root = Path(data_root)
    if not root.is_dir():
        raise ValueError(f"Parameter 'data_root' got {str(data_root)!r}: no such folder. Allowed: a folder that "
                         f"holds the {name!r} files, or '' for the standard places.")
    folders = _candidate_folders(name, root)
    missing = [split for split in ("train", "test") if not any(_files_present(name, f, split) for f in folders)]
    if missing:
        looked = ", ".join(str(f) for f in folders if f.is_dir())
        raise ValueError(f"Parameter 'data_root' got {str(data_root)!r}, which holds no {name!r} files for the "
                         f"{' and '.join(missing)} split(s) (looked in {looked}). Allowed: a folder with the "
                         f"dataset's files, '' for the standard places, or allow_download=true when online.")


_READERS = {"fashion_mnist": _load_idx_dataset, "mnist": _load_idx_dataset,
            "cifar10": _load_cifar10, "svhn": _load_svhn}


def _torchvision_download(name: str, root: Path, split: str) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    train = split == "train"
    if name == "svhn":
        tvd.SVHN(str(root), split=split, download=True)
    else:
        cls = {"fashion_mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]
        cls(str(root), train=train, download=True)


@functools.lru_cache(maxsize=8)
def load_dataset(name: str, split: str = "train", data_root: str | None = None,
                 allow_download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a real dataset from disk.

    Args:
        name: one of ``DATASET_SHAPES``.
        split: ``train`` or ``test``.
        data_root: the folder to search (with its usual subfolders); '' or None: ``$BNLIB_DATA`` and the
            standard places (Debian's Fashion-MNIST).
        allow_download: if the files are missing, fetch them with torchvision into ``data_root`` (or
            ``$BNLIB_DATA``). Off by default: the book builds offline.

    Returns:
        images (N, C, H, W) float32 in [0, 1], labels (N,) int64.
    """
    if name not in DATASET_SHAPES:
        raise ValueError(f"Parameter 'dataset' got {name!r}; allowed values: {', '.join(DATASET_SHAPES)}.")
    if split not in ("train", "test"):
        raise ValueError(f"Parameter 'split' got {split!r}; allowed values: 'train', 'test'.")
    candidates = _candidate_folders(name, data_root)
    found = _READERS[name](candidates, split)
    if found is None and allow_download:
        target = Path(data_root) if data_root else DEFAULT_DATA_HOME
        try:
            _torchvision_download(name, target, split)
        except Exception as error:  # network errors come in many types; report the cause
            raise DataNotFoundError(
                f"Could not download {name!r} into {target} ({type(error).__name__}: {error}). "
                "This machine may be offline; copy the files there by hand."
            ) from error
        found = _READERS[name](_candidate_folders(name, target), split)
    if found is None:
        hint = {
            "fashion_mnist": "install Debian's package (apt-get install dataset-fashion-mnist) or put the IDX "
                             "files (train-images-idx3-ubyte.gz, ...) in data_root",
            "mnist": "put the IDX files (train-images-idx3-ubyte.gz, ...) in data_root",
            "cifar10": "unpack cifar-10-python.tar.gz so that data_root/cifar-10-batches-py/ exists",
            "svhn": "put train_32x32.mat and test_32x32.mat in data_root",
        }[name]
        looked = "\n  ".join(str(c) for c in candidates)
        raise DataNotFoundError(
            f"Dataset {name!r} ({split}) not found. Looked in:\n  {looked}\nTo provide it: {hint}, "
            "or pass allow_download=True on a machine that is online (torchvision download)."
        )
    images, labels = found
    # Cached per process (lru_cache): callers must not modify the returned tensors in place.
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0), torch.from_numpy(
        np.asarray(labels, dtype=np.int64).copy()
    )


# ----------------------------------------------------------------------------- OOD sources and outliers

def fit_images(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Resize (bilinear, antialiased) and convert grayscale<->RGB so images match the target shape."""
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True) if channels == 1 else images.expand(-1, channels, -1, -1)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images.clamp(0, 1).contiguous()


def ood_digits(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Real handwritten digits from scikit-learn's bundled ``load_digits`` (8x8, 17 grey levels)."""
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().images).float().div_(16.0)[:, None]  # (1797, 1, 8, 8)
    if n > len(digits):
        raise ValueError(f"Parameter 'n_canaries' too large for ood_digits: at most {len(digits) // 2}.")
    index = torch.randperm(len(digits), generator=generator)[:n]
    return fit_images(digits[index], channels, size)


def ood_photos(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random crops of scikit-learn's two bundled photographs (china.jpg, flower.jpg)."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
              for image in load_sample_images().images]
    crop = 96
    out = torch.empty(n, 3, crop, crop)
    which = torch.randint(0, len(photos), (n,), generator=generator)
    for i in range(n):
        photo = photos[int(which[i])]
        top = int(torch.randint(0, photo.shape[1] - crop, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - crop, (1,), generator=generator))
        out[i] = photo[:, top:top + crop, left:left + crop]
    return fit_images(out, channels, size)


def noise_images(n: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform i.i.d. pixel noise."""
    return torch.rand(n, channels, size, size, generator=generator)


def random_labels(true_labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A label different from ``true_labels`` for every element (uniform over the other classes)."""
    shift = torch.randint(1, num_classes, true_labels.shape, generator=generator)
    return (true_labels + shift) % num_classes


# ----------------------------------------------------------------------------- experiment data

@dataclass(frozen=True)
class ExperimentData:
    """One seeded draw of the data an experiment uses.

    Attributes:
        train_x, train_y: inliers (n_train) followed by the inserted canaries (n_canaries), (N, C, H, W)/(N,)
        is_canary: (N,) bool, True for the inserted canaries in the training set
        heldout_canary_x, heldout_canary_y: canaries of the same kind never trained on (K, ...)
        test_x, test_y: clean test set
        mean, std: per-channel statistics of the inliers used by :meth:`normalize`
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    is_canary: torch.Tensor
    heldout_canary_x: torch.Tensor
    heldout_canary_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    outlier_kind: str
    class_names: tuple[str, ...] = ()

    def standardize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` standardized per channel with the training inliers' statistics (what every model sees)."""
        return normalize(images, self.train_x[~self.is_canary])

    @property
    def canary_x(self) -> torch.Tensor:
        return self.train_x[self.is_canary]

    @property
    def canary_y(self) -> torch.Tensor:
        return self.train_y[self.is_canary]

    # The pool a model zoo subsamples is the training set itself (inliers + the K inserted canaries): each
    # member trains on half of its inliers and half of its canaries (``balanced_keep_mask`` with strata), so a
    # member sees the same canary rate K / (n_train + K) as a single run, and its other half is its OUT set.
    @property
    def pool_x(self) -> torch.Tensor:
        return self.train_x

    @property
    def pool_y(self) -> torch.Tensor:
        return self.train_y

    @property
    def pool_is_outlier(self) -> torch.Tensor:
        return self.is_canary

    @property
    def canary_rate(self) -> float:
        """Fraction of canaries in a training set (a run's, and every zoo member's)."""
        return float(self.is_canary.float().mean())


def make_outliers(kind: str, n: int, source_x: torch.Tensor, source_y: torch.Tensor, num_classes: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``n`` outliers of ``kind`` shaped like ``source_x``; all carry random (wrong-for-content) labels.

    ``random_label`` takes in-distribution images from ``source_x`` (not used elsewhere) and relabels them.
    """
    channels, size = source_x.shape[1], source_x.shape[-1]
    if kind == "random_label":
        index = torch.randperm(len(source_x), generator=generator)[:n]
        return source_x[index].clone(), random_labels(source_y[index], num_classes, generator)
    maker = {"ood_digits": ood_digits, "ood_photos": ood_photos, "noise": noise_images}.get(kind)
    if maker is None:
        raise ValueError(f"Parameter 'outlier_kind' got {kind!r}; allowed values: "
                         "'ood_digits', 'ood_photos', 'random_label', 'noise'.")
    images = maker(n, channels, size, generator)
    return images, torch.randint(0, num_classes, (n,), generator=generator)


def make_experiment_data(cfg, seed: int = 0, allow_download: bool | None = None) -> ExperimentData:
    """Draw inliers, test points and 2K canaries (K inserted, K held out) for ``cfg`` with ``seed``.

    The draw depends only on (dataset, sizes, outlier_kind, seed): every norm sees the same examples.
    ``allow_download`` defaults to ``cfg.allow_download``.
    """
    if allow_download is None:
        allow_download = cfg.allow_download
    generator = torch.Generator().manual_seed(10_000 + seed)
    full_x, full_y = load_dataset(cfg.dataset, "train", cfg.data_root or None, allow_download)
    test_x, test_y = load_dataset(cfg.dataset, "test", cfg.data_root or None, allow_download)
    num_classes = DATASET_SHAPES[cfg.dataset][3]
    k = cfg.n_canaries
    needed = cfg.n_train + (2 * k if cfg.outlier_kind == "random_label" else 0)
    if needed > len(full_x):
        raise ValueError(f"Parameter 'n_train' ({cfg.n_train}) plus canaries needs {needed} training images; "
                         f"{cfg.dataset} has {len(full_x)}.")
    if cfg.n_test > len(test_x):
        raise ValueError(f"Parameter 'n_test' ({cfg.n_test}) exceeds the {len(test_x)} test images of {cfg.dataset}.")
    order = torch.randperm(len(full_x), generator=generator)
    inlier_index, spare_index = order[:cfg.n_train], order[cfg.n_train:]
    canary_x, canary_y = make_outliers(cfg.outlier_kind, 2 * k, full_x[spare_index], full_y[spare_index],
                                       num_classes, generator)
    test_index = torch.randperm(len(test_x), generator=generator)[:cfg.n_test]
    train_x = torch.cat([full_x[inlier_index], canary_x[:k]])
    train_y = torch.cat([full_y[inlier_index], canary_y[:k]])
    is_canary = torch.zeros(len(train_y), dtype=torch.bool)
    is_canary[cfg.n_train:] = True
    names = FASHION_MNIST_CLASSES if cfg.dataset == "fashion_mnist" else tuple(str(c) for c in range(num_classes))
    return ExperimentData(train_x, train_y, is_canary, canary_x[k:], canary_y[k:], test_x[test_index],
                          test_y[test_index], num_classes, cfg.outlier_kind, names)


def normalize(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Standardize per channel with the mean/std of ``reference`` (the inlier training images)."""
    mean = reference.mean(dim=(0, 2, 3), keepdim=True)
    std = reference.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (images - mean) / std


# ----------------------------------------------------------------------------- membership

def balanced_keep_mask(n_models: int, n_examples: int, seed: int, strata: torch.Tensor | None = None) -> torch.Tensor:
    """(n_models, n_examples) bool mask of complementary pairs: model 2k+1 keeps what model 2k leaves out.

    Model 2k keeps a random half of the examples (its own permutation, drawn from
    ``numpy.random.default_rng([20_000 + seed, k])``) and model 2k+1 the rest. With ``strata`` (N,) (e.g. the
    outlier flags), the half is drawn within each stratum, so every model holds half of each group (half of
    the canaries: the same canary rate for every model). Row t depends on (seed, t, strata) only, so the mask
    of a larger zoo extends that of a smaller one, row for row, and a grown zoo reuses the members it has.
    Every prefix of even length is balanced: each example is IN for exactly ``n_models // 2`` models (with an
    odd ``n_models`` the unpaired last row adds one more IN to half of the examples). This replaces LiRA's
    reference scheme (a random permutation of the models per example), which is balanced too but changes
    every row when ``n_models`` changes.
    """
    if n_models < 2:
        raise ValueError(f"Parameter 'n_models' must be >= 2 for a balanced keep mask; got {n_models}.")
    if n_examples < 2:
        raise ValueError(f"Parameter 'n_examples' must be >= 2 for a balanced keep mask; got {n_examples}.")
    labels = np.zeros(n_examples, dtype=np.int64) if strata is None else np.asarray(strata).astype(np.int64)
    if labels.shape != (n_examples,):
        raise ValueError(f"Parameter 'strata' has shape {labels.shape}; allowed: ({n_examples},), one label per "
                         "example.")
    rows = []
    for pair in range((n_models + 1) // 2):
        rng = np.random.default_rng([20_000 + seed, pair])
        first = torch.zeros(n_examples, dtype=torch.bool)
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            order = members[rng.permutation(len(members))]  # without strata: one stratum, all examples
            first[torch.from_numpy(order[:len(members) // 2])] = True
        rows += [first, ~first]
    return torch.stack(rows[:n_models])
