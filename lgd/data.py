"""Datasets for the experiments lgd reproduces (science.md, sections 2 and 5).

What lives here: small synthetic sets (``xor``, ``separable``), the fixed point sets of the papers (``fig4`` of Cai et
al., ``wu_toy`` of Wu et al.), scikit-learn's bundled 8x8 ``digits``, readers for the standard local MNIST (IDX) and
CIFAR-10 (python pickle) files, and ``load`` that picks one by name for the command line.

Every function returns ``(X, y)``: ``X`` a float64 array of shape (n, d), ``y`` a float64 array of shape (n,) with
values in {+1.0, -1.0}. With ``normalize=True`` every row is divided by the largest row norm of the returned points,
so the geometry of the set is kept and every ||x_i|| <= 1, as the theory assumes.

What does not live here: downloading (these machines have no network; the readers only read local files), train/test
splitting, and any model or training code. Only numpy and the standard library are imported at module level;
scikit-learn is imported inside ``digits``.
"""

import gzip
import math
import numbers
import pickle
import zlib
from pathlib import Path

import numpy as np

NAMES = ("xor", "fig4", "wu_toy", "separable", "digits", "mnist", "cifar10")

_MNIST_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, cols)
_MNIST_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
_MNIST_PREFIX = {"train": "train", "test": "t10k"}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_PIXELS = 3 * 32 * 32


def _check_count(n, name="n", allow_none=True):
    """Raise ValueError unless ``n`` is a positive integer (or None where allowed)."""
    if n is None and allow_none:
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {expected}, got {n!r}")


def _check_number(value, name: str, low: float, low_open: bool, high: float = math.inf) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is a real number in the interval from ``low``
    (excluded when ``low_open``) up to ``high`` (excluded)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < low or (low_open and value == low) or value >= high:
        bracket = "(" if low_open else "["
        upper = "inf" if math.isinf(high) else f"{high:g}"
        raise ValueError(f"{name} must be a number in {bracket}{low:g}, {upper}), got {value!r}")
    return float(value)


def _check_seed(seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def _check_flag(value, name: str):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _labels(is_positive):
    """+1.0 where ``is_positive`` holds, -1.0 elsewhere."""
    return np.where(is_positive, 1.0, -1.0)


def _scale_to_unit_ball(X):
    """Divide every row by the largest row norm: x_i <- x_i / max_j ||x_j||, so all ||x_i|| <= 1.

    An all-zero X is returned unchanged (there is nothing to scale, and dividing would give NaN).
    """
    largest_norm = np.sqrt(np.max(np.einsum("ij,ij->i", X, X)))
    return X / largest_norm if largest_norm > 0 else X


def _kept_count(available, n, source):
    """How many of the ``available`` matching points to keep: ``n``, or all when n is None. None available, or
    fewer than ``n``, is an error rather than a silently smaller set."""
    if available == 0:
        raise ValueError(f"no points found in {source}")
    if n is None:
        return available
    if n > available:
        raise ValueError(f"n={n} exceeds the {available} points available in {source}")
    return n


def _finish(X, y, normalize):
    """``(X, y)`` as float64 arrays, X C-contiguous and scaled into the unit ball when ``normalize``."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    if normalize:
        X = _scale_to_unit_ball(X)
    return X, np.asarray(y, dtype=np.float64)


def xor(n=200, noise=0.1, seed=0, normalize=True):
    """Noisy XOR in R^2: four Gaussian clusters with centres (+-1, +-1) and standard deviation ``noise``.

    Label +1 for the clusters at (1, 1) and (-1, -1), -1 for (1, -1) and (-1, 1): not linearly separable, the
    two-layer setting of Cai et al. Fig. 2. The n points are split as evenly as possible (the first n % 4 clusters
    get one more) and then shuffled so that any prefix mixes all four clusters. Deterministic for a given seed
    (``np.random.default_rng(seed)``).

    >>> X, y = xor(n=8, seed=1)
    >>> X.shape, y.tolist().count(1.0)
    ((8, 2), 4)
    """
    _check_count(n, allow_none=False)
    _check_number(noise, "noise", 0.0, False)
    _check_seed(seed)
    _check_flag(normalize, "normalize")
    centres = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    centre_labels = np.array([1.0, 1.0, -1.0, -1.0])
    per_cluster = n // 4 + (np.arange(4) < n % 4)
    cluster = np.repeat(np.arange(4), per_cluster)
    rng = np.random.default_rng(seed)
    X = centres[cluster] + noise * rng.standard_normal((n, 2))
    order = rng.permutation(n)
    return _finish(X[order], centre_labels[cluster][order], normalize)


def fig4(normalize=False):
    """The five points in R^3 of Cai et al. (NeurIPS 2024), Fig. 4.

    ((0.05, 1, 2), +1), ((0.05, -2, 1), +1), ((-1, 0, 2), -1), ((0.05, -2, -2), +1), ((0.05, 1, -2), +1).
    The max-margin direction is (1, 0, 0) with margin 0.05. ``normalize`` defaults to False because the paper uses
    the points raw (their norms exceed 1); normalizing rescales them and hence the margin.
    """
    X = np.array([[0.05, 1.0, 2.0], [0.05, -2.0, 1.0], [-1.0, 0.0, 2.0], [0.05, -2.0, -2.0], [0.05, 1.0, -2.0]])
    y = np.array([1.0, 1.0, -1.0, 1.0, 1.0])
    return _finish(X, y, normalize)


def wu_toy(normalize=False):
    """The four-point toy set of Wu et al. (COLT 2024) for logistic regression from w_0 = 0.

    x = (1, 0.2), y = +1; (-2, 0.2), +1; (-1, -0.2), -1; (2, -0.2), -1. ``normalize`` defaults to False because the
    paper uses the points raw.
    """
    X = np.array([[1.0, 0.2], [-2.0, 0.2], [-1.0, -0.2], [2.0, -0.2]])
    y = np.array([1.0, 1.0, -1.0, -1.0])
    return _finish(X, y, normalize)


def separable(n=200, d=10, margin=0.1, seed=0, normalize=True, return_direction=False):
    """Gaussian points in R^d, linearly separable by a random unit direction w* with margin exactly ``margin``.

    Construction (one rng, ``np.random.default_rng(seed)``):

    1. w* = g / ||g|| with g ~ N(0, I_d); z_i ~ N(0, I_d); y_i = sign(w*.z_i) (+1 on the hyperplane).
    2. Slide every point towards the hyperplane by the smallest gap: z_i <- z_i - y_i * min_j |w*.z_j| * w*, so the
       closest point lies on the hyperplane and y_i w*.z_i = |w*.z_i| - min_j |w*.z_j| >= 0.
    3. With normalize=True: x_i = (1 - margin) * z_i / max_j ||z_j|| + margin * y_i * w*. Then
       y_i w*.x_i = margin + (1 - margin) * (y_i w*.z_i) / max_j ||z_j|| >= margin, with equality for the closest
       point, and ||x_i|| <= (1 - margin) + margin = 1 by the triangle inequality.
       With normalize=False: x_i = z_i + margin * y_i * w* (same margin, in raw units; no bound on the norms).

    So min_i y_i w*.x_i == margin (up to rounding) in both cases. ``margin`` must lie in (0, 1) with normalize=True
    (points in the unit ball cannot have a larger margin) and be positive otherwise. With ``return_direction=True``
    the result is ``(X, y, w_star)``.
    """
    _check_count(n, allow_none=False)
    _check_count(d, name="d", allow_none=False)
    _check_seed(seed)
    _check_flag(normalize, "normalize")
    _check_number(margin, "margin" + (" (with normalize=True)" if normalize else ""), 0.0, True,
                  1.0 if normalize else math.inf)
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    w_star = direction / np.linalg.norm(direction)
    Z = rng.standard_normal((n, d))
    along = Z @ w_star
    y = _labels(along >= 0)
    Z = Z - np.outer(y * np.min(np.abs(along)), w_star)
    if normalize:
        largest_norm = np.max(np.linalg.norm(Z, axis=1))
        # Zero only when every point sits on the hyperplane (d == 1 with n == 1): nothing to rescale then.
        if largest_norm > 0:
            Z = (1 - margin) * Z / largest_norm
    X = Z + margin * np.outer(y, w_star)
    if return_direction:
        return X, y, w_star
    return X, y


def digits(a=0, b=8, n=None, normalize=True):
    """scikit-learn's bundled 8x8 handwritten digits (``sklearn.datasets.load_digits``; ships with the package).

    Keeps the images of digit ``a`` (label +1) and digit ``b`` (label -1) in their order in the set, then the first
    ``n`` of them (all when None). Pixels are the raw intensities 0..16 as float64, flattened to 64 features.
    Digits 0 and 8 have 178 and 174 images.
    """
    for name, digit in (("a", a), ("b", b)):
        if isinstance(digit, bool) or not isinstance(digit, numbers.Integral) or not 0 <= digit <= 9:
            raise ValueError(f"{name} must be a digit 0..9, got {digit!r}")
    if a == b:
        raise ValueError(f"a and b must differ, got a = b = {a}")
    _check_count(n)
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError('digits() needs scikit-learn: pip install "lgd[data]"') from error
    bunch = load_digits()
    keep = np.flatnonzero(np.isin(bunch.target, (a, b)))
    keep = keep[:_kept_count(keep.size, n, f"scikit-learn digits {a} and {b}")]
    return _finish(bunch.data[keep], _labels(bunch.target[keep] == a), normalize)


def _idx_file(folder, name):
    """The path of MNIST file ``name`` in ``folder``, plain or gzipped."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file {name} (or {name}.gz) not found in {folder}")


def _read_idx(path, magic, ndim):
    """Read an IDX file of unsigned bytes: a big-endian uint32 magic number, ``ndim`` big-endian uint32 dimensions,
    then the values. Returns a uint8 array of those dimensions; raises ValueError naming the file when the magic
    number or the length is wrong."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            content = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path} is not a whole gzip file: {exc}") from None
    header_bytes = 4 * (1 + ndim)
    if len(content) < header_bytes:
        raise ValueError(f"{path} is too short for an IDX header ({len(content)} bytes)")
    header = np.frombuffer(content, dtype=">u4", count=1 + ndim)
    if header[0] != magic:
        gzipped = " (it is gzipped: name it with a .gz suffix)" if content[:2] == b"\x1f\x8b" else ""
        raise ValueError(f"{path}: bad IDX magic number 0x{int(header[0]):08x}, expected 0x{magic:08x}{gzipped}")
    shape = tuple(int(size) for size in header[1:])
    values = np.frombuffer(content, dtype=np.uint8, offset=header_bytes)
    if values.size != np.prod(shape):
        raise ValueError(f"{path}: header announces shape {shape} ({np.prod(shape)} values), found {values.size}")
    return values.reshape(shape)


def mnist(path, digits=(0, 8), n=None, split="train", normalize=True):
    """MNIST images of two digits from the standard IDX files in the local folder ``path``.

    Reads ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (``t10k-...`` for split='test'), each plain
    or with a ``.gz`` suffix. The first digit gets label +1, the second -1; the first ``n`` matching images in file
    order are kept (all when None). Pixels are divided by 255 and flattened (784 features). With normalize=True the
    rows are then divided by the largest row norm of the returned points, so a train and a test call are scaled
    separately; pass normalize=False to apply one scale to both. Wu et al. use 1,000 images of "0" vs "8".
    """
    if len(digits) != 2 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 0 <= d <= 9
                               for d in digits):
        raise ValueError(f"digits must be two digits 0..9, got {digits!r}")
    if digits[0] == digits[1]:
        raise ValueError(f"digits must differ, got {digits!r}")
    _check_count(n)
    _check_split(split)
    folder = Path(path)
    prefix = _MNIST_PREFIX[split]
    labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"), _MNIST_LABELS_MAGIC, 1)
    images = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"), _MNIST_IMAGES_MAGIC, 3)
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split} files in {folder} disagree: {len(images)} images, {len(labels)} labels")
    positive, negative = digits
    keep = np.flatnonzero(np.isin(labels, digits))
    keep = keep[:_kept_count(keep.size, n, f"MNIST {split} digits {positive} and {negative} in {folder}")]
    X = images[keep].reshape(keep.size, -1) / 255.0
    return _finish(X, _labels(labels[keep] == positive), normalize)


def _cifar_folder(path):
    """The folder holding the CIFAR-10 batches: ``path`` itself or its ``cifar-10-batches-py`` subfolder."""
    folder = Path(path)
    for candidate in (folder, folder / _CIFAR_DIR):
        if (candidate / "batches.meta").is_file():
            return candidate
    raise FileNotFoundError(f"CIFAR-10 batches.meta not found in {folder} nor in {folder / _CIFAR_DIR}")


def _unpickle(path):
    """Load one CIFAR-10 pickle. The official files were written by Python 2, hence encoding='bytes' (their keys
    and strings come back as bytes). Unpickling runs code from the file: read only trusted files."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 file {path.name} not found in {path.parent}")
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
                IndexError) as exc:
            raise ValueError(f"{path} is not a CIFAR-10 pickle: {type(exc).__name__}: {exc}") from None


def _entry(record, key, path):
    """``record[key]`` under a bytes key (the official files) or a str key (files re-pickled by Python 3)."""
    for candidate in (key.encode(), key):
        if candidate in record:
            return record[candidate]
    raise ValueError(f"{path} has no entry {key!r}")


def _class_index(requested, label_names):
    if isinstance(requested, numbers.Integral) and not isinstance(requested, bool):
        if 0 <= requested < len(label_names):
            return int(requested)
        raise ValueError(f"class index {requested} out of range 0..{len(label_names) - 1}")
    if requested in label_names:
        return label_names.index(requested)
    raise ValueError(f"unknown CIFAR-10 class {requested!r}; valid: {', '.join(label_names)}")


def cifar10(path, classes=("airplane", "automobile"), n=None, split="train", normalize=True):
    """CIFAR-10 images of two classes from the python pickles in the local folder ``path``.

    ``path`` is the folder holding ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``, or
    the folder containing ``cifar-10-batches-py``. ``classes`` are two names from ``label_names`` (or indices
    0..9); the first gets label +1, the second -1. The first ``n`` matching images in file order are kept (all when
    None); the batches are read only as far as needed. Pixels are divided by 255 and flattened to 3072 features in
    the file's channel-major order. With normalize=True rows are divided by the largest row norm of the returned
    points. Cai et al. Fig. 1 uses 6,000 images of airplane vs automobile.
    """
    if len(classes) != 2:
        raise ValueError(f"classes must name two classes, got {classes!r}")
    _check_count(n)
    _check_split(split)
    folder = _cifar_folder(path)
    meta_path = folder / "batches.meta"
    label_names = [name.decode() if isinstance(name, bytes) else name
                   for name in _entry(_unpickle(meta_path), "label_names", meta_path)]
    positive, negative = (_class_index(requested, label_names) for requested in classes)
    if positive == negative:
        raise ValueError(f"classes must differ, got {classes!r}")
    kept_images, kept_labels, kept_count = [], [], 0
    for name in _CIFAR_FILES[split]:
        batch_path = folder / name
        batch = _unpickle(batch_path)
        images = np.asarray(_entry(batch, "data", batch_path))
        labels = np.asarray(_entry(batch, "labels", batch_path))
        if images.ndim != 2 or images.shape[1] != _CIFAR_PIXELS or len(images) != len(labels):
            raise ValueError(f"{batch_path}: expected data of shape (N, {_CIFAR_PIXELS}) and N labels, "
                             f"got data {images.shape} and {len(labels)} labels")
        keep = np.isin(labels, (positive, negative))
        kept_images.append(images[keep])
        kept_labels.append(labels[keep])
        kept_count += int(keep.sum())
        if n is not None and kept_count >= n:
            break
    images, labels = np.concatenate(kept_images), np.concatenate(kept_labels)
    source = f"CIFAR-10 {split} classes {label_names[positive]} and {label_names[negative]} in {folder}"
    count = _kept_count(len(labels), n, source)
    return _finish(images[:count] / 255.0, _labels(labels[:count] == positive), normalize)


_LOADERS = {"xor": xor, "fig4": fig4, "wu_toy": wu_toy, "separable": separable, "digits": digits,
            "mnist": mnist, "cifar10": cifar10}


def load(name, **kwargs):
    """The dataset ``name`` (one of ``NAMES``), built with the keyword arguments of its function.

    >>> X, y = load("wu_toy")
    >>> X.shape
    (4, 2)
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(NAMES)}")
    import inspect

    takes = inspect.signature(_LOADERS[name]).parameters
    unknown = [key for key in kwargs if key not in takes]
    if unknown:
        raise ValueError(f"dataset {name!r} takes no {', '.join(unknown)}; its options: "
                         f"{', '.join(takes) or 'none (its points are fixed)'}")
    return _LOADERS[name](**kwargs)
