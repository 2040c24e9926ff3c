"""Tests for lgd.data: the synthetic sets, the fixed point sets of the papers, and the MNIST / CIFAR-10 readers on
tiny files written here in the real on-disk formats."""

import gzip
import pickle
import subprocess
import sys

import numpy as np
import pytest

from lgd import data

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def assert_dataset(X, y, n, d, normalized):
    assert X.dtype == np.float64 and y.dtype == np.float64
    assert X.shape == (n, d) and y.shape == (n,)
    assert set(np.unique(y)) <= {1.0, -1.0}
    if normalized:
        assert np.all(np.linalg.norm(X, axis=1) <= 1 + 1e-12)


# ---------------------------------------------------------------- synthetic sets


@pytest.mark.parametrize("n", [1, 7, 200])
def test_xor_shape_labels_and_cluster_balance(n):
    X, y = data.xor(n=n, noise=0.1, seed=3)
    assert_dataset(X, y, n, 2, normalized=True)
    quadrant_label = np.sign(X[:, 0]) * np.sign(X[:, 1])
    # noise 0.1 is far too small to push a point across an axis from a centre at distance 1
    np.testing.assert_array_equal(quadrant_label, y)
    if n == 7:
        assert np.sum(y == 1) == 4 and np.sum(y == -1) == 3


def test_xor_normalization_keeps_geometry():
    X_raw, y_raw = data.xor(n=50, seed=1, normalize=False)
    X, y = data.xor(n=50, seed=1)
    np.testing.assert_array_equal(y, y_raw)
    largest_norm = np.max(np.linalg.norm(X_raw, axis=1))
    np.testing.assert_allclose(X, X_raw / largest_norm, rtol=0, atol=1e-15)
    assert np.isclose(np.max(np.linalg.norm(X, axis=1)), 1.0)


def test_xor_without_noise_sits_on_the_centres():
    X, y = data.xor(n=8, noise=0.0, normalize=False)
    np.testing.assert_array_equal(np.abs(X), np.ones((8, 2)))
    assert np.sum(y == 1) == 4


def test_xor_deterministic_per_seed():
    np.testing.assert_array_equal(data.xor(seed=5)[0], data.xor(seed=5)[0])
    assert not np.array_equal(data.xor(seed=5)[0], data.xor(seed=6)[0])


def test_fig4_points_exact():
    X, y = data.fig4()
    expected = [[0.05, 1, 2], [0.05, -2, 1], [-1, 0, 2], [0.05, -2, -2], [0.05, 1, -2]]
    np.testing.assert_array_equal(X, np.array(expected, dtype=np.float64))
    np.testing.assert_array_equal(y, [1, 1, -1, 1, 1])
    assert_dataset(X, y, 5, 3, normalized=False)
    # the max-margin direction (1, 0, 0) has margin 0.05
    assert np.isclose(np.min(y * X[:, 0]), 0.05)
    assert_dataset(*data.fig4(normalize=True), 5, 3, normalized=True)


def test_wu_toy_points_exact():
    X, y = data.wu_toy()
    np.testing.assert_array_equal(X, [[1, 0.2], [-2, 0.2], [-1, -0.2], [2, -0.2]])
    np.testing.assert_array_equal(y, [1, 1, -1, -1])
    assert_dataset(X, y, 4, 2, normalized=False)
    assert_dataset(*data.wu_toy(normalize=True), 4, 2, normalized=True)


@pytest.mark.parametrize("n, d, margin", [(200, 10, 0.1), (50, 2, 0.5), (1, 3, 0.2), (3, 1, 0.3), (1, 1, 0.3)])
def test_separable_margin_is_exact_and_norms_bounded(n, d, margin):
    X, y, w_star = data.separable(n=n, d=d, margin=margin, seed=2, return_direction=True)
    assert_dataset(X, y, n, d, normalized=True)
    assert w_star.shape == (d,) and np.isclose(np.linalg.norm(w_star), 1.0)
    signed_distance = y * (X @ w_star)
    assert abs(np.min(signed_distance) - margin) <= 1e-12
    assert np.all(signed_distance >= margin - 1e-12)


def test_separable_raw_keeps_the_margin_without_norm_bound():
    X, y, w_star = data.separable(n=100, d=5, margin=2.0, normalize=False, return_direction=True)
    assert abs(np.min(y * (X @ w_star)) - 2.0) <= 1e-12
    assert np.max(np.linalg.norm(X, axis=1)) > 1


def test_separable_deterministic_per_seed():
    first, again, other = (data.separable(seed=s, return_direction=True) for s in (4, 4, 9))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert len(data.separable()) == 2


@pytest.mark.parametrize("call, match", [
    (lambda: data.xor(n=0), "n must be a positive integer"),
    (lambda: data.xor(n=2.5), "n must be a positive integer"),
    (lambda: data.xor(noise=-0.1), "noise must be"),
    (lambda: data.xor(noise="0.1"), r"noise must be a number in \[0, inf\), got '0.1'"),
    (lambda: data.xor(noise=None), "noise must be a number"),
    (lambda: data.xor(seed=-1), "seed must be an integer >= 0, got -1"),
    (lambda: data.xor(seed=1.5), "seed must be an integer >= 0, got 1.5"),
    (lambda: data.xor(normalize="no"), "normalize must be True or False, got 'no'"),
    (lambda: data.separable(margin=0.0), r"margin \(with normalize=True\) must be a number in \(0, 1\)"),
    (lambda: data.separable(margin=1.0), r"margin \(with normalize=True\) must be a number in \(0, 1\)"),
    (lambda: data.separable(margin=None), r"margin \(with normalize=True\) must be a number in \(0, 1\)"),
    (lambda: data.separable(margin=-1.0, normalize=False), r"margin must be a number in \(0, inf\)"),
    (lambda: data.separable(d=0), "d must be a positive integer"),
    (lambda: data.separable(n=None), "n must be a positive integer,"),
])
def test_synthetic_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- scikit-learn digits


def test_digits_zero_versus_eight():
    pytest.importorskip("sklearn")
    X, y = data.digits()
    assert_dataset(X, y, 178 + 174, 64, normalized=True)
    assert np.sum(y == 1) == 178 and np.sum(y == -1) == 174
    X_raw, _ = data.digits(n=10, normalize=False)
    assert X_raw.shape == (10, 64) and X_raw.max() <= 16 and X_raw.max() > 1
    with pytest.raises(ValueError, match="n=1000 exceeds the 352 points available in scikit-learn digits 0 and 8"):
        data.digits(n=1000)


def test_digits_other_pair_and_prefix():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    target = load_digits().target
    expected = target[np.isin(target, (3, 5))][:20]
    _, y = data.digits(a=3, b=5, n=20)
    np.testing.assert_array_equal(y, np.where(expected == 3, 1.0, -1.0))


@pytest.mark.parametrize("kwargs, match", [
    ({"a": 1, "b": 1}, "a and b must differ"),
    ({"a": 10}, "a must be a digit"),
    ({"b": -1}, "b must be a digit"),
    ({"n": 0}, "n must be a positive integer"),
])
def test_digits_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.digits(**kwargs)


# ---------------------------------------------------------------- MNIST (IDX files)


def write_idx(path, values, magic, compress):
    header = np.array([magic, *values.shape], dtype=">u4").tobytes()
    content = header + values.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(content)
    else:
        path.write_bytes(content)


def write_mnist(folder, prefix, labels, compress):
    """Images whose every pixel equals 10 * (index + 1), so a returned row identifies its source image."""
    labels = np.asarray(labels, dtype=np.uint8)
    images = np.repeat(10 * (np.arange(len(labels)) + 1), 28 * 28).reshape(len(labels), 28, 28)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, 0x00000803, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, 0x00000801, compress)


MNIST_TRAIN_LABELS = [0, 8, 3, 0, 0, 8, 1, 8, 0, 5, 8, 0]


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reads_plain_and_gzip(tmp_path, compress):
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress)
    X, y = data.mnist(tmp_path, normalize=False)
    kept = [i for i, label in enumerate(MNIST_TRAIN_LABELS) if label in (0, 8)]
    assert_dataset(X, y, len(kept), 784, normalized=False)
    np.testing.assert_array_equal(y, [1.0 if MNIST_TRAIN_LABELS[i] == 0 else -1.0 for i in kept])
    np.testing.assert_allclose(X[:, 0], [10 * (i + 1) / 255 for i in kept])
    assert np.all(X == X[:, :1])


def test_mnist_prefix_digit_order_normalization_and_test_split(tmp_path):
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress=False)
    write_mnist(tmp_path, "t10k", [8, 8, 0, 4], compress=True)
    X, y = data.mnist(tmp_path, digits=(8, 0), n=3)
    assert_dataset(X, y, 3, 784, normalized=True)
    np.testing.assert_array_equal(y, [-1, 1, -1])
    assert np.isclose(np.max(np.linalg.norm(X, axis=1)), 1.0)
    X_test, y_test = data.mnist(tmp_path, split="test", normalize=False)
    np.testing.assert_array_equal(y_test, [-1, -1, 1])
    np.testing.assert_allclose(X_test[:, 0], [10 / 255, 20 / 255, 30 / 255])


def test_mnist_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte \\(or train-labels-idx1-ubyte.gz\\)"):
        data.mnist(tmp_path)
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress=False)
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.mnist(tmp_path, split="test")


def test_mnist_bad_magic_names_the_file(tmp_path):
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress=False)
    # a labels file where the images file belongs: magic 0x801 instead of 0x803
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(12, dtype=np.uint8), 0x00000801, compress=False)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: bad IDX magic number 0x00000801, expected "
                                         "0x00000803"):
        data.mnist(tmp_path)


def test_mnist_truncated_and_inconsistent_files(tmp_path):
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress=False)
    images_path = tmp_path / "train-images-idx3-ubyte"
    images_path.write_bytes(images_path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: header announces shape \\(12, 28, 28\\)"):
        data.mnist(tmp_path)
    images_path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short for an IDX header"):
        data.mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8), 0x00000801, compress=False)
    write_idx(images_path, np.zeros((4, 28, 28), dtype=np.uint8), 0x00000803, compress=False)
    with pytest.raises(ValueError, match="4 images, 5 labels"):
        data.mnist(tmp_path)


def test_mnist_damaged_or_misnamed_gzip_names_the_file(tmp_path):
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress=True)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    whole = labels.read_bytes()
    labels.write_bytes(whole[: len(whole) // 2])  # cut short
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz is not a whole gzip file"):
        data.mnist(tmp_path)
    labels.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz is not a whole gzip file"):
        data.mnist(tmp_path)
    labels.unlink()
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(whole)  # gzipped under the plain name
    with pytest.raises(ValueError, match="bad IDX magic number .*it is gzipped: name it with a .gz suffix"):
        data.mnist(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"digits": (3, 3)}, "digits must differ"),
    ({"digits": (0, 10)}, "digits must be two digits"),
    ({"digits": (1,)}, "digits must be two digits"),
    ({"split": "valid"}, "split must be 'train' or 'test'"),
    ({"n": -1}, "n must be a positive integer"),
    ({"n": 100}, "n=100 exceeds the 9 points"),
    ({"digits": (2, 7)}, "no points found in MNIST train digits 2 and 7"),
])
def test_mnist_argument_errors(tmp_path, kwargs, match):
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress=True)
    with pytest.raises(ValueError, match=match):
        data.mnist(tmp_path, **kwargs)


# ---------------------------------------------------------------- CIFAR-10 (python pickles)


def write_pickle(path, record):
    # protocol 2, as the official Python 2 files
    with open(path, "wb") as f:
        pickle.dump(record, f, protocol=2)


def write_cifar(folder, batch_labels, test_labels, str_keys=False):
    """One pickle per batch; image k of batch b has every pixel equal to 10 * b + k, identifying its source."""
    folder.mkdir(parents=True, exist_ok=True)

    def key(name):
        return name if str_keys else name.encode()

    names = CIFAR_NAMES if str_keys else [name.encode() for name in CIFAR_NAMES]
    write_pickle(folder / "batches.meta", {key("label_names"): names, key("num_vis"): 3072})
    files = [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]
    for index, (name, labels) in enumerate(zip(files, [*batch_labels, test_labels])):
        pixels = np.repeat(10 * index + np.arange(len(labels)), 3072).reshape(len(labels), 3072).astype(np.uint8)
        write_pickle(folder / name, {key("data"): pixels, key("labels"): list(labels),
                                     key("batch_label"): name, key("filenames"): [b"x.png"] * len(labels)})


CIFAR_BATCHES = [[0, 1, 2], [1, 1, 0], [3, 0], [9], [0, 1]]


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10_reads_batches_in_order(tmp_path, str_keys):
    write_cifar(tmp_path, CIFAR_BATCHES, [1, 0, 5], str_keys=str_keys)
    X, y = data.cifar10(tmp_path, normalize=False)
    assert_dataset(X, y, 8, 3072, normalized=False)
    np.testing.assert_array_equal(y, [1, -1, -1, -1, 1, 1, 1, -1])
    np.testing.assert_allclose(X[:, 0] * 255, [0, 1, 10, 11, 12, 21, 40, 41])
    X_test, y_test = data.cifar10(tmp_path, split="test")
    assert_dataset(X_test, y_test, 2, 3072, normalized=True)
    np.testing.assert_array_equal(y_test, [-1, 1])


def test_cifar10_subfolder_class_indices_and_prefix(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", CIFAR_BATCHES, [])
    X, y = data.cifar10(tmp_path, classes=(1, "airplane"), n=4)
    assert_dataset(X, y, 4, 3072, normalized=True)
    np.testing.assert_array_equal(y, [-1, 1, 1, 1])
    assert np.isclose(np.max(np.linalg.norm(X, axis=1)), 1.0)


def test_cifar10_stops_reading_once_n_is_reached(tmp_path):
    write_cifar(tmp_path, CIFAR_BATCHES, [])
    (tmp_path / "data_batch_5").unlink()
    _, y = data.cifar10(tmp_path, n=6)
    assert len(y) == 6
    with pytest.raises(FileNotFoundError, match="CIFAR-10 file data_batch_5 not found"):
        data.cifar10(tmp_path)


def test_cifar10_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="batches.meta not found"):
        data.cifar10(tmp_path)
    write_cifar(tmp_path, CIFAR_BATCHES, [])
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch not found"):
        data.cifar10(tmp_path, split="test")


def test_cifar10_malformed_batch(tmp_path):
    write_cifar(tmp_path, CIFAR_BATCHES, [])
    write_pickle(tmp_path / "data_batch_1", {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="data_batch_1: expected data of shape \\(N, 3072\\)"):
        data.cifar10(tmp_path)
    write_pickle(tmp_path / "data_batch_1", {b"labels": [0, 1]})
    with pytest.raises(ValueError, match="data_batch_1 has no entry 'data'"):
        data.cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_1 is not a CIFAR-10 pickle"):
        data.cifar10(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"classes": ("airplane", "spaceship")}, "unknown CIFAR-10 class 'spaceship'; valid: airplane, automobile, "
                                             "bird, cat, deer, dog, frog, horse, ship, truck"),
    ({"classes": (0, 10)}, "class index 10 out of range 0..9"),
    ({"classes": ("cat", 3)}, "classes must differ"),
    ({"classes": ("cat",)}, "classes must name two classes"),
    ({"split": "val"}, "split must be 'train' or 'test'"),
    ({"n": 9}, "n=9 exceeds the 8 points available in CIFAR-10 train classes airplane and automobile"),
    ({"classes": ("ship", "horse")}, "no points found"),
])
def test_cifar10_argument_errors(tmp_path, kwargs, match):
    write_cifar(tmp_path, CIFAR_BATCHES, [])
    with pytest.raises(ValueError, match=match):
        data.cifar10(tmp_path, **kwargs)


# ---------------------------------------------------------------- dispatch


def test_load_dispatches_by_name(tmp_path):
    assert set(data.NAMES) == {"xor", "fig4", "wu_toy", "separable", "digits", "mnist", "cifar10"}
    np.testing.assert_array_equal(data.load("xor", n=10, seed=2)[0], data.xor(n=10, seed=2)[0])
    np.testing.assert_array_equal(data.load("fig4")[0], data.fig4()[0])
    write_mnist(tmp_path, "train", MNIST_TRAIN_LABELS, compress=False)
    assert data.load("mnist", path=tmp_path, n=2)[0].shape == (2, 784)


def test_load_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid: xor, fig4, wu_toy, separable, digits, "
                                         "mnist, cifar10"):
        data.load("imagenet")


def test_import_does_not_load_scikit_learn():
    code = "import sys, lgd.data; print('sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
