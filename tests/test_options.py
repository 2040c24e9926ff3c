"""lgd.Record and lgd.Compute: shorthands, checks, and the keywords they replace (numpy backend, tiny runs)."""

import dataclasses
import inspect
import warnings

import numpy as np
import pytest

import lgd

RUN_FIELDS = ("step", "risk", "accuracy", "margin", "neuron_margins", "weights", "sharpness", "sharpness_step")


@pytest.fixture
def xor():
    return lgd.data.xor(n=20, seed=1)


def _call(function, X, y, **kwargs):
    net = lgd.TwoLayerNet(4)
    if function == "gd":
        return lgd.gd(X, y, net, "logistic", stepsize=2.0, steps=12, **kwargs)
    return lgd.sweep(X, y, net, "logistic", stepsizes=[0.5, 2.0], steps=12, seeds=(0, 1), **kwargs)


def _assert_same(first, second):
    for name in RUN_FIELDS:
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype, name
            np.testing.assert_array_equal(a, b, err_msg=name)
    timing = ("sharpness_seconds",)
    assert {k: v for k, v in first.meta.items() if k not in timing} == \
        {k: v for k, v in second.meta.items() if k not in timing}


def test_the_common_call_needs_no_options(xor):
    for function in (lgd.gd, lgd.sweep):
        defaults = inspect.signature(function).parameters
        assert defaults["record"].default == 1 and defaults["compute"].default == "auto"
    assert lgd.options.resolve(1, "auto", {}, "gd") == (lgd.Record(), lgd.Compute())
    X, y = xor
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = lgd.gd(X, y, lgd.TwoLayerNet(4), "logistic", stepsize=2.0, steps=12, compute="numpy")
    assert run.step.tolist() == list(range(13)) and run.sharpness is None and run.neuron_margins.shape == (13, 4)
    assert run.meta["dtype"] == "float64" and run.meta["record_every"] == 1


@pytest.mark.parametrize("function", ["gd", "sweep"])
def test_shorthands_mean_the_objects(xor, function):
    X, y = xor
    short = _call(function, X, y, record=5, compute="numpy")
    full = _call(function, X, y, record=lgd.Record(every=5), compute=lgd.Compute(backend="numpy"))
    _assert_same(short, full)
    assert short.meta["record_every"] == 5 and short.meta["backend"] == "numpy"
    assert short.step.tolist() == [0, 5, 10, 12]


def test_the_objects_are_frozen_and_normalise_their_fields():
    record = lgd.Record(every=np.int64(5), neuron_margins=np.bool_(True), sharpness_every=np.int32(3))
    assert record == lgd.Record(every=5, neuron_margins=True, sharpness_every=3)
    assert type(record.every) is int and type(record.sharpness_every) is int and record.neuron_margins is True
    assert lgd.Compute(dtype=np.float32).dtype == "float32" and lgd.Compute(dtype="f8").dtype == "float64"
    assert lgd.Compute("numba") == lgd.Compute(backend="numba")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.every = 2
    assert dataclasses.replace(record, every=7) == lgd.Record(every=7, neuron_margins=True, sharpness_every=3)
    assert {record, lgd.Compute()}  # hashable


BAD_OPTIONS = [
    (lambda: lgd.Record(every=0), "Record.every must be an integer >= 1, got 0"),
    (lambda: lgd.Record(every=2.5), "Record.every must be an integer >= 1, got 2.5"),
    (lambda: lgd.Record(every=True), "Record.every must be an integer >= 1, got True"),
    (lambda: lgd.Record(sharpness_every=0), "Record.sharpness_every must be an integer >= 1, got 0"),
    (lambda: lgd.Record(sharpness_k=0), "Record.sharpness_k must be an integer >= 1, got 0"),
    (lambda: lgd.Record(sharpness_points=1.5), "Record.sharpness_points must be an integer >= 1, got 1.5"),
    (lambda: lgd.Record(neuron_margins="yes"), "Record.neuron_margins must be None, True or False, got 'yes'"),
    (lambda: lgd.Compute(backend="jax"), "unknown backend 'jax'; valid: 'auto', 'numpy', 'numba', 'cupy'"),
    (lambda: lgd.Compute(backend=None), "unknown backend None; valid: 'auto'"),
    (lambda: lgd.Compute(dtype="float16"), "Compute.dtype must be float64 or float32, got float16"),
    (lambda: lgd.Compute(dtype=">i8"), "Compute.dtype must be float64 or float32, got >i8"),
    (lambda: lgd.Compute(dtype="fast"), "Compute.dtype must be float64 or float32, got 'fast'"),
    (lambda: lgd.Compute(progress="on"), "Compute.progress must be None, True or False, got 'on'"),
]


@pytest.mark.parametrize("build, message", BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_bad_options_fail_when_built(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert str(error.value).startswith(message)


def test_bad_shorthands_fail_before_any_work():
    not_data = object()  # the options are checked before the data
    with pytest.raises(ValueError, match="Record.every must be an integer >= 1, got 0"):
        lgd.gd(not_data, not_data, lgd.Linear(), record=0)
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        lgd.sweep(not_data, not_data, lgd.Linear(), compute="jax")
    with pytest.raises(TypeError, match=r"record must be an lgd.Record or an integer .*, got '5'"):
        lgd.gd(not_data, not_data, lgd.Linear(), record="5")
    with pytest.raises(TypeError, match=r"record must be an lgd.Record or an integer .*, got True"):
        lgd.gd(not_data, not_data, lgd.Linear(), record=True)
    with pytest.raises(TypeError, match=r"compute must be an lgd.Compute or a backend name .*, got 3"):
        lgd.gd(not_data, not_data, lgd.Linear(), compute=3)


# (old keyword, its value, what the call gives besides, the same call in the new form, the warning's advice)
DEPRECATED = [
    ("record_every", 5, dict(compute="numpy"), dict(record=5, compute="numpy"),
     "record_every=5 is deprecated: use record=lgd.Record(every=5) (or record=5)"),
    ("neuron_margins", False, dict(compute="numpy"), dict(record=lgd.Record(neuron_margins=False), compute="numpy"),
     "neuron_margins=False is deprecated: use record=lgd.Record(neuron_margins=False)"),
    ("sharpness_every", 5, dict(compute="numpy"), dict(record=lgd.Record(sharpness_every=5), compute="numpy"),
     "sharpness_every=5 is deprecated: use record=lgd.Record(sharpness_every=5)"),
    ("sharpness_k", 2, dict(record=lgd.Record(sharpness_every=5), compute="numpy"),
     dict(record=lgd.Record(sharpness_every=5, sharpness_k=2), compute="numpy"),
     "sharpness_k=2 is deprecated: use record=lgd.Record(sharpness_k=2)"),
    ("sharpness_points", 10, dict(record=lgd.Record(sharpness_every=5), compute="numpy"),
     dict(record=lgd.Record(sharpness_every=5, sharpness_points=10), compute="numpy"),
     "sharpness_points=10 is deprecated: use record=lgd.Record(sharpness_points=10)"),
    ("backend", "numpy", dict(record=3), dict(record=3, compute="numpy"),
     "backend='numpy' is deprecated: use compute=lgd.Compute(backend='numpy') (or compute='numpy')"),
    ("dtype", "float32", dict(compute="numpy"), dict(compute=lgd.Compute("numpy", dtype="float32")),
     "dtype='float32' is deprecated: use compute=lgd.Compute(dtype='float32')"),
    ("progress", False, dict(compute="numpy"), dict(compute=lgd.Compute("numpy", progress=False)),
     "progress=False is deprecated: use compute=lgd.Compute(progress=False)"),
]


@pytest.mark.parametrize("function", ["gd", "sweep"])
@pytest.mark.parametrize("keyword, value, besides, new, advice", DEPRECATED, ids=[d[0] for d in DEPRECATED])
def test_each_old_keyword_warns_and_runs_as_the_new_form(xor, function, keyword, value, besides, new, advice):
    X, y = xor
    with pytest.warns(DeprecationWarning) as caught:
        old = _call(function, X, y, **besides, **{keyword: value})
    assert [str(w.message) for w in caught] == [advice]
    assert caught[0].filename == __file__  # the stack level points at the user's call
    _assert_same(old, _call(function, X, y, **new))


def test_several_old_keywords_together(xor):
    X, y = xor
    with pytest.warns(DeprecationWarning) as caught:
        old = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=12, record_every=4, backend="numpy",
                     dtype="float32", neuron_margins=False)
    assert len(caught) == 4 and all(w.filename == __file__ for w in caught)
    new = lgd.gd(X, y, lgd.TwoLayerNet(4), stepsize=2.0, steps=12, record=lgd.Record(every=4, neuron_margins=False),
                 compute=lgd.Compute("numpy", dtype="float32"))
    _assert_same(old, new)


@pytest.mark.parametrize("function", ["gd", "sweep"])
@pytest.mark.parametrize("given", [
    dict(record=5, record_every=5),
    dict(record=lgd.Record(sharpness_every=2), sharpness_every=3),
    dict(compute="numpy", backend="numpy"),
    dict(compute=lgd.Compute(dtype="float32"), dtype="float64"),
], ids=["every", "sharpness_every", "backend", "dtype"])
def test_an_old_keyword_and_the_new_object_for_the_same_field_is_an_error(xor, function, given):
    X, y = xor
    keyword = next(k for k in given if k not in ("record", "compute"))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=f"{keyword}=.* both set .*give it once"):
        _call(function, X, y, **given)


@pytest.mark.parametrize("function", ["gd", "sweep"])
def test_an_unknown_keyword_is_a_type_error_naming_it(xor, function):
    X, y = xor
    with pytest.raises(TypeError, match=rf"^{function}\(\) got an unexpected keyword argument 'record_evry'$"):
        _call(function, X, y, compute="numpy", record_evry=5)
