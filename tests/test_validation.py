"""The shared argument checks: canonical values back, one message pattern on error."""

import math
import re

import numpy as np
import pytest
import torch

from humancompatible_train._validation import (
    check_bool,
    check_choice,
    check_device,
    check_float_dtype,
    check_int,
    check_real,
)


def test_bool_refuses_strings_and_ints():
    assert check_bool("flag", True) is True
    assert check_bool("flag", np.bool_(False)) is False
    for bad in ("False", 0, 1, None):
        with pytest.raises(ValueError, match=r"^flag: expected True or False, got"):
            check_bool("flag", bad)


def test_int_accepts_numpy_and_names_the_range():
    assert check_int("m", np.int64(2), minimum=1) == 2
    assert type(check_int("m", np.int64(2), minimum=1)) is int
    with pytest.raises(ValueError, match=r"^m: expected a positive int, got 0$"):
        check_int("m", 0, minimum=1)
    with pytest.raises(ValueError, match=r"m: expected a positive int, got True"):
        check_int("m", True, minimum=1)
    with pytest.raises(ValueError, match=r"^g 'a': seed: expected an int >= 0, got -1$"):
        check_int("seed", -1, minimum=0, where="g 'a': ")
    with pytest.raises(ValueError, match=r"expected an int in \[0, 3\], got 2.5"):
        check_int("k", 2.5, minimum=0, maximum=3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.1", None, True])
def test_real_refuses_non_finite_and_non_numbers(bad):
    with pytest.raises(ValueError, match=r"^lr: expected a finite number >= 0"):
        check_real("lr", bad, low=0.0)


def test_real_bounds_open_and_closed():
    assert check_real("x", np.float32(0.5), low=0, high=1) == 0.5
    assert check_real("x", 0, low=0) == 0.0
    with pytest.raises(ValueError, match=r"expected a finite number > 0, got 0"):
        check_real("x", 0, low=0, low_open=True)
    with pytest.raises(ValueError, match=r"in \[0, 1\), got 1"):
        check_real("x", 1, low=0, high=1, high_open=True)
    assert check_real("x", math.inf, low=0, finite=False) == math.inf
    with pytest.raises(ValueError, match=r"not NaN"):
        check_real("x", math.nan, finite=False)


def test_choice_and_dtype_and_device():
    assert check_choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"^mode: expected one of \('a', 'b'\), got \['a'\]$"):
        check_choice("mode", ["a"], ("a", "b"))
    assert check_float_dtype("dtype", "float32") is torch.float32
    assert check_float_dtype("dtype", torch.float64) is torch.float64
    for bad in ("int64", torch.int64, "nope", 3):
        with pytest.raises(ValueError, match=r"^dtype: expected a floating-point torch.dtype"):
            check_float_dtype("dtype", bad)
    assert check_device("device", "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device: expected a torch.device"):
        check_device("device", "not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device: device 'cuda' is not available here"):
            check_device("device", "cuda")


def test_check_settings_applies_each_rule_in_order_with_labels_and_optional_values():
    from humancompatible_train._validation import (
        boolean,
        check_settings,
        choice,
        integer,
        real,
    )

    rules = {"a": real(low=0.0), "b": integer(minimum=1, optional=True),
             "c": choice(("x", "y")), "d": boolean(label="flag")}
    check_settings({"a": 0.5, "b": None, "c": "x", "d": True}, rules, "g: ")
    with pytest.raises(ValueError, match=r"^g: b: expected a positive int, got 0$"):
        check_settings({"a": 0.5, "b": 0, "c": "x", "d": True}, rules, "g: ")
    with pytest.raises(ValueError, match=r"^flag: expected True or False, got 'no'$"):
        check_settings({"a": 0.5, "b": 2, "c": "y", "d": "no"}, rules)
    with pytest.raises(ValueError, match=r"^a: "):  # the first failing rule, in table order
        check_settings({"a": -1.0, "b": 0, "c": "z", "d": 1}, rules)


@pytest.mark.parametrize("name", ["ALM", "iALM", "nuPI", "AdaptiveDual", "PBM", "SSG"])
def test_every_tabled_hyperparameter_is_rechecked_when_written_into_a_group(name):
    """Each dual optimizer's table: a value written into the param group after construction
    (as a scheduler does) is refused at the next step, naming the hyperparameter."""
    import humancompatible_train.dual_optim as dual_optim

    cls = getattr(dual_optim, name)
    for key, rule in cls._HYPERPARAMETERS.items():
        dual = cls(1)
        duals = dual.duals
        dual.param_groups[0][key] = "bad"
        expected = re.escape(f"{rule.label or key}: expected ") + ".*got 'bad'"
        with pytest.raises(ValueError, match=expected):
            dual.step(torch.tensor([0.5]))
        assert torch.equal(dual.duals, duals) and dual.state_dict()["state"][0]["step"] == 0
