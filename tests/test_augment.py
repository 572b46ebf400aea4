"""DataAugmenter and the op registry: specs by declared name, seeded per batch, extensible."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import readme_python_block
from ledger import BadInputError, DataAugmenter, generator, register_op
from ledger.augment import augment_path
from ledger.augment_ops import lookup_op, registered_ops

import trainer_ops  # noqa: F401 - registers the test ops


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)


def test_the_spec_names_ops_by_declared_name_version_and_every_parameter() -> None:
    augmenter = DataAugmenter(noise_std=0.1, mask_prob=0.25, scale_jitter=0.05)
    assert augmenter.spec == [
        {"op": "scale_jitter", "version": 1, "jitter": 0.05},
        {"op": "gaussian_noise", "version": 1, "std": 0.1},
        {"op": "feature_mask", "version": 1, "prob": 0.25, "fill": 0.0},
    ]
    assert all(isinstance(op["op"], str) and "." not in op["op"] for op in augmenter.spec)


def test_integer_parameters_are_recorded_as_floats_so_equal_settings_have_equal_specs() -> None:
    assert DataAugmenter(noise_std=1).spec == DataAugmenter(noise_std=1.0).spec
    assert isinstance(DataAugmenter(noise_std=1).spec[0]["std"], float)


def test_from_spec_rebuilds_the_same_augmenter(batch: np.ndarray) -> None:
    augmenter = DataAugmenter(noise_std=0.2, mask_prob=0.1,
                              ops=[{"op": "test_offset", "amount": 2.0}])
    rebuilt = DataAugmenter.from_spec(augmenter.spec)
    assert rebuilt.spec == augmenter.spec
    assert np.array_equal(augmenter(batch, seed=5, epoch=1, batch_index=2),
                          rebuilt(batch, seed=5, epoch=1, batch_index=2))


def test_same_seed_same_output_other_seed_other_output(batch: np.ndarray) -> None:
    augmenter = DataAugmenter(noise_std=0.1, mask_prob=0.1, seed=42)
    first = augmenter(batch, epoch=0, batch_index=0)
    assert np.array_equal(first, DataAugmenter(noise_std=0.1, mask_prob=0.1, seed=42)(
        batch, epoch=0, batch_index=0))
    assert not np.array_equal(first, DataAugmenter(noise_std=0.1, mask_prob=0.1, seed=43)(
        batch, epoch=0, batch_index=0))
    assert not np.array_equal(first, augmenter(batch, epoch=0, batch_index=1))
    assert not np.array_equal(first, augmenter(batch, epoch=1, batch_index=0))


def test_the_batch_generator_is_the_derived_one_of_its_path(batch: np.ndarray) -> None:
    rng = generator(9, augment_path(3, 4))
    expected = batch + rng.standard_normal(batch.shape, dtype=np.float32) * np.float32(0.5)
    assert np.array_equal(DataAugmenter(noise_std=0.5, seed=9)(batch, epoch=3, batch_index=4),
                          expected)


def test_the_input_is_not_modified(batch: np.ndarray) -> None:
    before = batch.copy()
    DataAugmenter(noise_std=1.0, mask_prob=0.5, seed=1)(batch)
    assert np.array_equal(batch, before)


def test_feature_mask_masks_about_its_probability_with_its_fill_value() -> None:
    ones = np.ones((200, 50), dtype=np.float64)
    out = DataAugmenter(mask_prob=0.1, mask_fill=-7.0, seed=3)(ones)
    assert set(np.unique(out)) == {-7.0, 1.0}
    assert 0.08 < np.mean(out == -7.0) < 0.12


def test_gaussian_noise_has_its_standard_deviation_and_keeps_the_dtype() -> None:
    zeros = np.zeros((400, 50), dtype=np.float32)
    out = DataAugmenter(noise_std=0.3, seed=3)(zeros)
    assert out.dtype == np.float32
    assert 0.28 < float(out.std()) < 0.32 and abs(float(out.mean())) < 0.01


def test_scale_jitter_scales_each_sample_by_one_factor_within_bounds() -> None:
    ones = np.ones((100, 6), dtype=np.float64)
    out = DataAugmenter(scale_jitter=0.2, seed=3)(ones)
    assert np.all(out == out[:, :1])
    assert out.min() >= 0.8 and out.max() <= 1.2 and out[:, 0].std() > 0.05


def test_augmenting_needs_a_seed_outside_an_experiment(batch: np.ndarray) -> None:
    with pytest.raises(BadInputError, match="got no seed"):
        DataAugmenter(noise_std=0.1)(batch)
    assert np.array_equal(DataAugmenter(noise_std=0.1)(batch, seed=4),
                          DataAugmenter(noise_std=0.1, seed=4)(batch))


@pytest.mark.parametrize("kwargs, message", [
    ({"noise_std": -0.1}, r"std must be in \[0.0, inf\], got -0.1"),
    ({"noise_std": float("nan")}, "std must be in"),
    ({"mask_prob": 1.5}, r"prob must be in \[0.0, 1.0\], got 1.5"),
    ({"mask_prob": "a lot"}, "prob must be a number"),
    ({"scale_jitter": 1.0}, "jitter must be in"),
    ({"ops": [{"op": "no_such_op"}]}, "unknown augmentation op 'no_such_op'"),
    ({"ops": [{"op": "gaussian_noise", "version": 99, "std": 1.0}]}, "version 99 is not registered"),
    ({"ops": [{"op": "gaussian_noise", "std": 1.0, "colour": "red"}]}, "unknown parameter"),
    ({"ops": [{"op": "gaussian_noise"}]}, r"needs parameter\(s\) \['std'\]"),
    ({"ops": [{"std": 1.0}]}, "an op spec is a map with an 'op' name"),
    ({"ops": {"op": "gaussian_noise", "std": 1.0}}, "list of op specs"),
    ({"seed": -1}, "root seed must be in"),
])
def test_bad_settings_are_refused_saying_what_was_given(kwargs: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        DataAugmenter(**kwargs)


def test_builtin_ops_refuse_integer_features() -> None:
    with pytest.raises(BadInputError, match="needs float32 or float64 features, got int64"):
        DataAugmenter(noise_std=0.1, seed=1)(np.zeros((4, 2), dtype=np.int64))


def test_a_custom_op_is_registered_by_name_and_version_and_used_in_order(
        batch: np.ndarray) -> None:
    assert "test_offset@1" in registered_ops()
    augmenter = DataAugmenter(mask_prob=1.0, ops=[{"op": "test_offset", "amount": 3.0}], seed=2)
    out = augmenter(batch)
    assert augmenter.spec[-1] == {"op": "test_offset", "version": 1, "amount": 3.0}
    # masking to 0 first, then the offset: every value is 3 + the same uniform draw
    assert np.unique(out).size == 1 and 3.0 <= out[0, 0] < 4.0
    assert augmenter.custom_modules == ["trainer_ops"]


def test_a_name_and_version_cannot_be_taken_by_another_function() -> None:
    with pytest.raises(BadInputError, match="already registered"):
        @register_op("gaussian_noise", version=1)
        def impostor(batch: np.ndarray, rng: np.random.Generator, *, std: float) -> None:
            pass


def test_registering_the_same_function_again_is_allowed_and_new_versions_coexist() -> None:
    def twice(batch: np.ndarray, rng: np.random.Generator, *, k: float = 2.0) -> None:
        batch *= k

    def thrice(batch: np.ndarray, rng: np.random.Generator, *, k: float = 3.0) -> None:
        batch *= k

    register_op("test_scale", version=1)(twice)
    register_op("test_scale", version=1)(twice)
    register_op("test_scale", version=2)(thrice)
    assert lookup_op("test_scale").version == 2
    ones = np.ones((2, 2), dtype=np.float32)
    assert DataAugmenter(ops=[{"op": "test_scale", "version": 1}], seed=1)(ones)[0, 0] == 2.0
    assert DataAugmenter(ops=[{"op": "test_scale"}], seed=1)(ones)[0, 0] == 3.0


@pytest.mark.parametrize("name, version", [("", 1), ("has space", 1), ("ok", 0), ("ok", True)])
def test_malformed_names_and_versions_are_refused(name: str, version: int) -> None:
    with pytest.raises(BadInputError):
        register_op(name, version)


def test_an_op_must_take_batch_rng_and_named_parameters() -> None:
    with pytest.raises(BadInputError, match=r"must take \(batch, rng, \*\*params\)"):
        register_op("test_bad_signature", 1)(lambda batch: None)
    with pytest.raises(BadInputError, match="must name its parameters"):
        @register_op("test_kwargs", 1)
        def loose(batch: np.ndarray, rng: np.random.Generator, **params: float) -> None:
            pass


def test_an_op_returning_another_shape_is_refused(batch: np.ndarray) -> None:
    @register_op("test_reshape", 1)
    def reshape(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return batch[:1]

    with pytest.raises(BadInputError, match="returned shape"):
        DataAugmenter(ops=[{"op": "test_reshape"}], seed=1)(batch)


def test_an_op_may_return_a_new_array_of_the_same_shape(batch: np.ndarray) -> None:
    @register_op("test_negate", 1)
    def negate(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return -batch

    assert np.array_equal(DataAugmenter(ops=[{"op": "test_negate"}], seed=1)(batch), -batch)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**128 - 1), epoch=st.integers(0, 10**6), index=st.integers(0, 10**6))
def test_a_batch_depends_only_on_seed_epoch_and_index_not_on_call_history(
        seed: int, epoch: int, index: int) -> None:
    data = np.linspace(-1, 1, 48, dtype=np.float32).reshape(12, 4)
    augmenter = DataAugmenter(noise_std=0.1, mask_prob=0.2, scale_jitter=0.1, seed=seed)
    first = augmenter(data, epoch=epoch, batch_index=index)
    augmenter(data, epoch=epoch + 1, batch_index=index)
    again = DataAugmenter.from_spec(augmenter.spec, seed=seed)(data, epoch=epoch,
                                                                batch_index=index)
    assert first.tobytes() == again.tobytes()


@pytest.mark.parametrize("params,match", [
    ({"std": 1.0, "colour": "red"}, r"unknown parameter\(s\) \['colour'\]; it takes \['std'\]"),
    ({}, r"needs parameter\(s\) \['std'\]; it takes \['std'\]"),
    ({"colour": "red"}, r"unknown parameter\(s\) \['colour'\] and needs parameter\(s\) \['std'\]")])
def test_op_params_that_do_not_fit_are_named_as_draws_and_transforms_name_them(
        params: dict, match: str) -> None:
    """One wording for every registry (ledger.registered_functions.check_params_fit)."""
    with pytest.raises(BadInputError, match=match):
        DataAugmenter(ops=[{"op": "gaussian_noise", **params}])


@pytest.mark.parametrize(("table", "kind"), [(np.ones(2), "ndarray"), ({1, 2}, "set")])
def test_an_op_param_that_cannot_be_recorded_is_named_with_its_op(table: Any, kind: str) -> None:
    """An array as an op's parameter was refused as "cannot encode a value of type ndarray
    canonically", naming neither the op nor the parameter."""
    with pytest.raises(BadInputError, match=rf"^got op 'test_table_scale' v1 params\['table'\] "
                                            rf"that cannot be recorded: cannot encode a value of "
                                            rf"type {kind} canonically$"):
        DataAugmenter(ops=[{"op": "test_table_scale", "table": table}])


def test_the_readme_custom_op_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's block is copied by users: it must run as it stands, imports included."""
    import ledger.augment_ops

    code = readme_python_block("### DataAugmenter", "register_op")
    monkeypatch.setattr(ledger.augment_ops, "_REGISTRY", dict(ledger.augment_ops._REGISTRY))
    namespace: dict = {"__name__": "readme_ops"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    augmenter = namespace["augmenter"]
    assert augmenter.spec[-1] == {"op": "sign_flip", "version": 1, "prob": 0.1}
    ones = np.ones((64, 8), dtype=np.float32)
    out = DataAugmenter(ops=[{"op": "sign_flip", "prob": 0.5}], seed=3)(ones)
    assert set(np.unique(out)) == {-1.0, 1.0}


# -- from the augment mutation sweep -----------------------------------------------------------


def test_batch_b_of_epoch_e_draws_from_the_documented_path(batch: np.ndarray) -> None:
    """The path is part of the recorded format (README): a replayer outside this code base
    rebuilds ("epoch", e, "batch", b, "augment") literally, so epoch and batch may not swap."""
    assert augment_path(3, 4) == ("epoch", 3, "batch", 4, "augment")
    rng = generator(9, ("epoch", 3, "batch", 4, "augment"))
    expected = batch + rng.standard_normal(batch.shape, dtype=np.float32) * np.float32(0.5)
    assert np.array_equal(DataAugmenter(noise_std=0.5, seed=9)(batch, epoch=3, batch_index=4),
                          expected)


def test_a_zero_setting_is_an_op_recorded_like_any_other() -> None:
    """noise_std=0.0 is a setting the user gave, not 'no augmenter': the recorded spec must say
    so, exactly as for any other value (an auditor reads the settings from it)."""
    augmenter = DataAugmenter(noise_std=0.0, mask_prob=0.0, scale_jitter=0.0)
    assert [op["op"] for op in augmenter.spec] == ["scale_jitter", "gaussian_noise",
                                                   "feature_mask"]
    assert len(augmenter) == 3 and len(DataAugmenter()) == 0


@pytest.mark.parametrize("build, message", [
    (lambda: DataAugmenter(ops="gaussian_noise"), "ops must be a list of op specs, got str"),
    (lambda: DataAugmenter(ops=b"gaussian_noise"), "ops must be a list of op specs, got bytes"),
    (lambda: DataAugmenter.from_spec("gaussian_noise"), "spec is a list of op specs, got str"),
    (lambda: DataAugmenter.from_spec({"op": "gaussian_noise", "std": 1.0}),
     "spec is a list of op specs, got dict"),
    (lambda: DataAugmenter(ops=[{"op": "gaussian_noise", "std": 1.0, 3: "x"}]),
     r"parameter names must be str, got \['3'\]"),
    (lambda: DataAugmenter(ops=[{"op": "gaussian_noise", "version": True, "std": 1.0}]),
     "op version must be an int, got True"),
    (lambda: DataAugmenter(ops=[{"op": "gaussian_noise", "version": "1", "std": 1.0}]),
     "op version must be an int, got '1'"),
], ids=["ops-str", "ops-bytes", "spec-str", "spec-dict", "int-key", "version-bool",
        "version-str"])
def test_malformed_op_lists_are_refused_saying_what_they_are(build: Any, message: str) -> None:
    """A string is iterable and a dict iterates its keys: both must be named as what they are,
    not fail later on their characters or keys."""
    with pytest.raises(BadInputError, match=message):
        build()


def test_the_spec_is_a_copy_that_cannot_change_the_augmenter(batch: np.ndarray) -> None:
    """Changing the returned spec (say, to record it elsewhere) must not change what runs,
    nor what is recorded next."""
    augmenter = DataAugmenter(noise_std=0.1, seed=3)
    before = augmenter(batch)
    augmenter.spec[0]["std"] = 5.0
    assert augmenter.spec == [{"op": "gaussian_noise", "version": 1, "std": 0.1}]
    assert np.array_equal(augmenter(batch), before)


def test_an_op_returning_another_dtype_is_refused(batch: np.ndarray) -> None:
    """A float64 result written into a float32 batch would be silently rounded: the op broke
    its contract (same shape and dtype), and saying so beats a quietly different batch."""
    @register_op("test_widen", 1)
    def widen(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return batch.astype(np.float64)

    with pytest.raises(BadInputError, match=r"returned shape \(64, 8\) float64, but must "
                                            r"return \(64, 8\) float32"):
        DataAugmenter(ops=[{"op": "test_widen"}], seed=1)(batch)


def test_the_seed_of_the_call_overrides_the_augmenters_own(batch: np.ndarray) -> None:
    """``seed`` defaults to the augmenter's own: given, it is the one used."""
    own = DataAugmenter(noise_std=0.1, seed=1)
    assert np.array_equal(own(batch, seed=2), DataAugmenter(noise_std=0.1, seed=2)(batch))
    assert not np.array_equal(own(batch, seed=2), own(batch))


def test_the_output_does_not_depend_on_the_inputs_memory_layout(batch: np.ndarray) -> None:
    """An op works on a private C-ordered copy: one writing through a flat view of the batch
    gives the same result for a Fortran-ordered input of the same values."""
    @register_op("test_zero_every_other", 1)
    def zero_every_other(batch: np.ndarray, rng: np.random.Generator) -> None:
        batch.reshape(-1)[::2] = 0.0

    augmenter = DataAugmenter(ops=[{"op": "test_zero_every_other"}], seed=1)
    expected = augmenter(batch)
    assert np.all(expected.reshape(-1)[::2] == 0.0)
    assert np.array_equal(augmenter(np.asfortranarray(batch)), expected)


def test_augmenters_are_equal_when_spec_and_seed_are(batch: np.ndarray) -> None:
    """Equal augmenters must augment alike: another seed gives other batches, so it differs."""
    assert DataAugmenter(noise_std=0.1, seed=1) == DataAugmenter.from_spec(
        DataAugmenter(noise_std=0.1).spec, seed=1)
    assert DataAugmenter(noise_std=0.1, seed=1) != DataAugmenter(noise_std=0.1, seed=2)
    assert DataAugmenter(noise_std=0.1, seed=1) != DataAugmenter(noise_std=0.2, seed=1)
    assert repr(DataAugmenter(noise_std=0.1, seed=5)) == "DataAugmenter([gaussian_noise@1], seed=5)"
    assert repr(DataAugmenter(mask_prob=0.1)) == "DataAugmenter([feature_mask@1])"


def test_an_op_returning_a_ragged_list_is_named_outside_an_iterator(batch: np.ndarray) -> None:
    """Called directly, the augmenter names the op that broke its contract, as in the iterator."""
    with pytest.raises(BadInputError, match=r"op 'test_return_ragged' returned a list that is "
                                            r"not an array of one shape"):
        DataAugmenter(ops=[{"op": "test_return_ragged"}], seed=1)(batch)


def test_the_spec_holds_parameters_as_the_ledger_records_them() -> None:
    """A tuple or numpy scalar given to an op without a check is recorded as a list or a
    Python number: ``spec`` must already be that form, so that an augmenter equals the one
    rebuilt from its record and a trainer comparing specs sees no false difference."""
    augmenter = DataAugmenter(ops=[{"op": "test_table_scale", "table": (1, np.int64(2))},
                                   {"op": "test_offset", "amount": np.float32(0.5)}])
    assert augmenter.spec == [{"op": "test_table_scale", "version": 1, "table": [1, 2]},
                              {"op": "test_offset", "version": 1, "amount": 0.5}]
    assert type(augmenter.spec[0]["table"][1]) is int
    assert type(augmenter.spec[1]["amount"]) is float



@pytest.mark.parametrize("kwargs, message", [
    ({"noise_std": float("inf")}, r"std must be in \[0.0, inf\], got inf"),
    ({"noise_std": True}, "std must be a number"),
    ({"mask_prob": 0.5, "mask_fill": True}, "fill must be a number, got True"),
    ({"scale_jitter": -0.1}, r"jitter must be in \[0.0, 0.999\], got -0.1"),
    ({"scale_jitter": float("inf")}, "jitter must be in"),
])
def test_booleans_infinities_and_negative_jitter_are_refused(kwargs: dict, message: str) -> None:
    """True is an int to Python and inf passes an upper bound of inf: neither is a noise level
    a trainer means, and a negative jitter is a sign mistake — all refused when built."""
    with pytest.raises(BadInputError, match=message):
        DataAugmenter(**kwargs)


def test_the_documented_bounds_and_numpy_scalars_are_accepted_and_recorded_as_floats() -> None:
    """Each parameter's documented bounds are allowed, and numpy scalars (what a config read
    with numpy yields) are recorded as plain floats, as equal Python values would be."""
    augmenter = DataAugmenter(noise_std=np.float32(0.5), mask_prob=np.float32(1.0),
                              mask_fill=np.int64(-1), scale_jitter=0.999)
    assert augmenter.spec == [
        {"op": "scale_jitter", "version": 1, "jitter": 0.999},
        {"op": "gaussian_noise", "version": 1, "std": 0.5},
        {"op": "feature_mask", "version": 1, "prob": 1.0, "fill": -1.0},
    ]
    assert all(type(value) is float for op in augmenter.spec for key, value in op.items()
               if key not in ("op", "version"))
    assert type(DataAugmenter(mask_prob=0.5, mask_fill=-1).spec[0]["fill"]) is float


def test_each_builtin_op_computes_what_its_name_and_version_promise() -> None:
    """Known answers from the README's description of each op, on float64 features: noise
    drawn in the batch's dtype, factors cast to it, masks from float32 uniforms. A change to
    any of these changes what (name, version 1) computes and stops old runs replaying."""
    batch = np.linspace(-2, 2, 60).reshape(10, 6)
    rng = generator(7, augment_path(0, 0))
    expected = batch + rng.standard_normal(batch.shape, dtype=np.float64) * 0.5
    assert DataAugmenter(noise_std=0.5, seed=7)(batch).tobytes() == expected.tobytes()
    rng = generator(7, augment_path(0, 0))
    factors = rng.uniform(1.0 - 0.3, 1.0 + 0.3, size=(10, 1)).astype(np.float32)
    expected32 = batch.astype(np.float32) * factors
    assert DataAugmenter(scale_jitter=0.3, seed=7)(batch.astype(np.float32)).tobytes() == (
        expected32.tobytes())
    rng = generator(7, augment_path(0, 0))
    masked = rng.random(batch.shape, dtype=np.float32) < np.float32(0.4)
    expected = np.where(masked, -9.0, batch)
    assert DataAugmenter(mask_prob=0.4, mask_fill=-9.0, seed=7)(batch).tobytes() == (
        expected.tobytes())


def test_a_value_whose_uniform_equals_the_mask_probability_is_kept() -> None:
    """A value is masked when its uniform is strictly below prob (so prob 0 never masks): the
    boundary case, built from the batch's own first uniform."""
    first = generator(7, augment_path(0, 0)).random((4, 3), dtype=np.float32)[0, 0]
    out = DataAugmenter(mask_prob=float(first), mask_fill=-9.0, seed=7)(np.ones((4, 3)))
    assert out[0, 0] == 1.0


def test_registered_ops_are_listed_sorted_as_name_at_version() -> None:
    """The list is shown in error messages and to users choosing an op: sorted, so stable."""
    listed = registered_ops()
    assert listed == sorted(listed)
    assert {"feature_mask@1", "gaussian_noise@1", "scale_jitter@1"} <= set(listed)
