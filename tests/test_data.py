import gzip
import pickle

import numpy as np
import pytest
import torch

from bnlib import config, data


def test_fashion_mnist_real_files():
    x, y = data.load_dataset("fashion_mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(y.tolist()) == set(range(10))


def test_idx_round_trip(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    for name in ("a.idx", "b.idx.gz"):
        data.write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), array)


def test_idx_bad_magic(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="IDX"):
        data.read_idx(tmp_path / "bad")


def _write_mnist(folder, n=12):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        data.write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        data.write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_mnist_in_torchvision_layout(tmp_path):
    images, labels = _write_mnist(tmp_path / "MNIST" / "raw")
    x, y = data.load_dataset("mnist", "train", str(tmp_path))
    assert x.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(x[:, 0].numpy() * 255, images, atol=1e-3)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_cifar10_pickle_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 2, 3]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    x, y = data.load_dataset("cifar10", "train", str(tmp_path))
    assert x.shape == (15, 3, 32, 32) and y.tolist() == [1, 2, 3] * 5
    with open(folder / "test_batch", "rb") as handle:
        raw = pickle.load(handle)["data"]
    x_test, _ = data.load_dataset("cifar10", "test", str(tmp_path))
    np.testing.assert_allclose(x_test.reshape(3, -1).numpy() * 255, raw, atol=1e-3)


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": images, "y": np.array([[10], [1], [2], [10]], dtype=np.uint8)})
    x, y = data.load_dataset("svhn", "test", str(tmp_path))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 1, 2, 0]
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy() * 255, images[..., 1], atol=1e-3)


def test_missing_data_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(data.DataNotFoundError) as error:
        data.load_dataset("cifar10", "train", str(tmp_path / "nowhere"))
    message = str(error.value)
    assert "nowhere" in message and "cifar-10-batches-py" in message and "allow_download" in message


def test_unknown_dataset():
    with pytest.raises(ValueError, match="'dataset'"):
        data.load_dataset("imagenet")


@pytest.mark.parametrize("kind", ["ood_digits", "ood_photos", "random_label", "noise"])
def test_outliers_shapes_and_labels(kind):
    source_x = torch.rand(50, 1, 28, 28)
    source_y = torch.randint(0, 10, (50,))
    images, labels = data.make_outliers(kind, 20, source_x, source_y, 10, torch.Generator().manual_seed(0))
    assert images.shape == (20, 1, 28, 28) and labels.shape == (20,)
    assert 0 <= images.min() and images.max() <= 1 and labels.max() < 10


def test_random_label_always_differs():
    y = torch.randint(0, 10, (1000,))
    new = data.random_labels(y, 10, torch.Generator().manual_seed(0))
    assert (new != y).all() and new.max() < 10


def test_fit_images_converts_channels_and_size():
    rgb = torch.rand(2, 3, 64, 64)
    assert data.fit_images(rgb, 1, 28).shape == (2, 1, 28, 28)
    assert data.fit_images(torch.rand(2, 1, 8, 8), 3, 32).shape == (2, 3, 32, 32)


def test_experiment_data_injection(smoke_cfg):
    d = data.make_experiment_data(smoke_cfg, seed=0)
    k = smoke_cfg.n_canaries
    assert len(d.train_y) == smoke_cfg.n_train + k and int(d.is_canary.sum()) == k
    assert len(d.heldout_canary_y) == k and len(d.test_y) == smoke_cfg.n_test
    # the inserted canaries really are the tail of the training tensors, the held-out ones are not in it
    assert torch.equal(d.canary_x, d.train_x[-k:])
    flat_train = d.train_x.reshape(len(d.train_x), -1)
    for image in d.heldout_canary_x.reshape(k, -1):
        assert not (flat_train == image).all(1).any()
    # the zoo's pool is the training set: a member's half holds the same canary rate as a run
    assert torch.equal(d.pool_is_outlier, d.is_canary) and torch.equal(d.pool_y, d.train_y)
    assert d.canary_rate == pytest.approx(k / (smoke_cfg.n_train + k))


def test_experiment_data_is_reproducible(smoke_cfg):
    a, b = data.make_experiment_data(smoke_cfg, 3), data.make_experiment_data(smoke_cfg, 3)
    c = data.make_experiment_data(smoke_cfg, 4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_y, c.train_y)


@pytest.mark.parametrize("n_models", [2, 4, 7, 16])
def test_balanced_keep_mask(n_models):
    keep = data.balanced_keep_mask(n_models, 300, seed=0)
    assert keep.shape == (n_models, 300)
    assert ((keep.sum(0) == n_models // 2) | (keep.sum(0) == n_models // 2 + n_models % 2)).all()
    assert (keep[: n_models - n_models % 2].sum(0) == n_models // 2).all()  # the even prefix is exactly balanced
    assert torch.equal(keep, data.balanced_keep_mask(n_models, 300, seed=0))
    assert not torch.equal(keep, data.balanced_keep_mask(n_models, 300, seed=1))


def test_gzip_reader_handles_plain_and_gz(tmp_path):
    raw = bytes([0, 0, 8, 1]) + np.array([3], dtype=">i4").tobytes() + bytes([7, 8, 9])
    (tmp_path / "x").write_bytes(raw)
    with gzip.open(tmp_path / "x.gz", "wb") as handle:
        handle.write(raw)
    assert data.read_idx(tmp_path / "x").tolist() == data.read_idx(tmp_path / "x.gz").tolist() == [7, 8, 9]


def test_a_data_root_that_does_not_exist_is_rejected_by_the_config_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="'data_root'.*no such folder"):
        config.load("smoke", data_root=str(tmp_path / "no" / "such" / "folder"))


def test_a_data_root_without_the_dataset_is_rejected_and_never_replaced_by_the_standard_places(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'data_root'.*holds no 'fashion_mnist' files"):
        config.load("smoke", data_root=str(tmp_path / "empty"))
    # the loader itself does not fall back to Debian's copy either
    with pytest.raises(data.DataNotFoundError):
        data.load_dataset("fashion_mnist", "train", str(tmp_path / "empty"))


def test_a_data_root_with_the_files_is_accepted_and_read(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw")
    cfg = config.load("smoke", dataset="mnist", data_root=str(tmp_path))
    assert cfg.data_root == str(tmp_path)
    (tmp_path / "half").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / "half" / name).write_bytes((tmp_path / "MNIST" / "raw" / name).read_bytes())
    with pytest.raises(ValueError, match="for the test split"):
        config.load("smoke", dataset="mnist", data_root=str(tmp_path / "half"))
    # online users may name a folder that the download will fill
    assert config.load("smoke", data_root=str(tmp_path / "later"), allow_download=True).allow_download


def test_stratified_keep_mask_gives_every_model_half_of_each_group():
    strata = torch.zeros(103, dtype=torch.bool)
    strata[::10] = True  # 11 "canaries" among 103 examples
    keep = data.balanced_keep_mask(6, 103, seed=2, strata=strata)
    assert (keep.sum(0) == 3).all()  # balanced per example
    assert set(keep[:, strata].sum(1).tolist()) <= {5, 6} and (keep[0::2, strata].sum(1) == 5).all()
    assert (keep[0::2, ~strata].sum(1) == 46).all()  # each pair's first model: half of each group, rounded down
    assert torch.equal(keep[:4], data.balanced_keep_mask(4, 103, seed=2, strata=strata))  # extends row for row
    with pytest.raises(ValueError, match="'strata'"):
        data.balanced_keep_mask(4, 103, seed=2, strata=strata[:50])
