"""Property tests (hypothesis) for the input parsers: `--students` (`parse_int_list`), `--param`
(`parse_params`), the sweep fields and the grid expansion. Valid input round-trips; invalid input
raises KdbenchError and never anything else; an expanded grid has the size of the product of its
dimensions and unique run keys."""
from __future__ import annotations

import json
import math
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdbench.config import parse_int_list, parse_params
from kdbench.errors import KdbenchError
from kdbench.method import get_method
from kdbench.sweep import FIELDS, SweepSpec, parse_field, resolve_all

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

space = st.text(" \t", max_size=2)
anything = st.text(string.printable + "٣éß\x00", max_size=40)


# ------------------------------------------------------------------------------------- --students
@FAST
@given(st.integers(0, 3).flatmap(lambda m: st.tuples(st.just(m), st.lists(st.integers(m, 10**6), min_size=1,
                                                                               max_size=8, unique=True))),
       st.data())
def test_int_list_round_trips(min_and_values, data) -> None:
    minimum, values = min_and_values
    text = ",".join(f"{data.draw(space)}{v}{data.draw(space)}" for v in values)
    assert parse_int_list(text, "students", minimum=minimum) == values


@FAST
@given(anything, st.integers(0, 2))
@example("1,,2", 1)
@example("1,2,", 1)
@example("2,2", 1)
@example("0", 1)
@example("-1", 0)
@example("1.5", 1)
@example("9" * 5000, 1)  # longer than int() accepts
@example("", 1)
def test_int_list_invalid_raises_kdbench_error_only(text: str, minimum: int) -> None:
    try:
        values = parse_int_list(text, "students", minimum=minimum)
    except KdbenchError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert len(values) == len(text.split(",")) and len(set(values)) == len(values)
    assert all(isinstance(v, int) and v >= minimum for v in values)


@pytest.mark.parametrize("text", ["1,,2", "1,2,", ",1", "2,2", "0", "x", "1;2", " ", "1 2"])
def test_int_list_rejects(text: str) -> None:
    with pytest.raises(KdbenchError, match="--students"):
        parse_int_list(text, "students", minimum=1)


# ------------------------------------------------------------------------------------- --param
KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
WORD = st.from_regex(r"[a-z][a-z0-9_\-]{0,8}", fullmatch=True).filter(
    lambda w: w not in ("true", "false", "none", "null") and not _is_json(w))
VALUE = st.one_of(
    st.integers(-10**12, 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    WORD,
    st.lists(WORD, min_size=2, max_size=4).map(",".join),  # `assistants=plain6,plain4` stays one value
)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _text(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


@FAST
@given(st.dictionaries(KEY, VALUE, max_size=6), st.data())
def test_params_round_trip(params: dict, data) -> None:
    pairs = [f"{data.draw(space)}{k}{data.draw(space)}={data.draw(space)}{_text(v)}" for k, v in params.items()]
    split = data.draw(st.integers(0, len(pairs)))  # some pairs in one --param, the rest repeated
    items = ([",".join(pairs[:split])] if split else []) + pairs[split:]
    parsed = parse_params(items)
    assert parsed == params
    for k, v in params.items():
        assert type(parsed[k]) is type(v) or (isinstance(v, float) and isinstance(parsed[k], (int, float)))


@FAST
@given(st.lists(anything, max_size=4))
@example(["a=" + "[" * 100_000])  # absurd nesting must not escape as RecursionError
@example(["=1"])
@example(["a"])
@example(["a=1,b"])
@example(["a b=1"])
@example(["a=1,,b=2"])
def test_params_invalid_raises_kdbench_error_only(items: list[str]) -> None:
    try:
        out = parse_params(items)
    except KdbenchError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert all(isinstance(k, str) and k.isidentifier() for k in out)


# ------------------------------------------------------------------------------------- sweep fields
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**62, 2**62), st.floats(), anything),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


@FAST
@given(st.sampled_from(FIELDS.names()), JSONISH)
@example("seeds", 10**6 + 0.5)
@example("params", {"a": {"b": {"c": 1}}})
@example("params", {1: 2})
@example("students", [1, [2]])
def test_sweep_fields_raise_kdbench_error_only(name: str, value) -> None:
    try:
        key, parsed = parse_field(name, value)
    except KdbenchError as e:  # (the CLI prints any message as one line)
        assert str(e)
        return
    assert key == name


@pytest.mark.parametrize("name", ["lr", "val_fraction", "seeds"])
def test_sweep_fields_huge_integer(name: str) -> None:
    with pytest.raises(KdbenchError):
        parse_field(name, 10**400)


# ------------------------------------------------------------------------------------- grid expansion
METHODS = ["student", "kd", "tcn", "takd", "ft", "kdgan"]


@SLOW
@given(st.lists(st.sampled_from(METHODS), min_size=1, max_size=4, unique=True),
       st.lists(st.sampled_from([1, 2, 4, 6, 8]), min_size=1, max_size=3, unique=True),
       st.one_of(st.none(), st.lists(st.sampled_from(["ff", "gan"]), min_size=1, max_size=2, unique=True)),
       st.lists(st.integers(0, 50), min_size=1, max_size=3, unique=True),
       st.booleans())
def test_grid_size_is_the_product_and_keys_are_unique(methods, students, modes, seeds, as_text) -> None:
    fields = {"method": methods, "students": students, "seeds": seeds, "dataset": "mnist"}
    if modes is not None:
        fields["mode"] = modes
    if as_text:  # the command line's comma-separated text gives the same grid as YAML / Python lists
        fields = {k: ",".join(map(str, v)) if isinstance(v, list) and (k != "seeds" or len(v) > 1) else v
                  for k, v in fields.items()}  # (one seed as text would be a count: `--seeds 3` = 0,1,2)
    specs = SweepSpec.build(overrides=fields).expand()
    expected = 0
    for name in methods:
        cls = get_method(name)
        real_modes = [m for m in cls.modes if m]
        n_modes = (len(modes) if modes else 1) if real_modes else 1
        n_students = len(students) if cls.multi_student else 1
        expected += n_modes * n_students * len(seeds)
    assert len(specs) == expected
    cells = [(s.method, s.mode, s.n_students, s.seed) for s in specs]
    assert len(set(cells)) == len(cells)
    keys = [r.key for r in resolve_all(specs)]  # resolve_all drops duplicate keys: none may vanish
    assert len(keys) == len(specs) == len(set(keys))


@SLOW
@given(st.dictionaries(st.sampled_from(["method", "students", "mode", "seeds"]), anything, min_size=1))
@example({"method": "kd", "seeds": "1,1"})
@example({"method": "tcn", "students": "3"})
@example({"method": "tcn", "mode": "ff,,gan"})
@example({"method": "kd,", "seeds": "2"})
def test_bad_grid_raises_kdbench_error_only(fields: dict) -> None:
    try:
        specs = SweepSpec.build(overrides={"dataset": "digits", **fields}).expand()
        resolved = resolve_all(specs)
    except KdbenchError as e:  # (the CLI prints any message as one line)
        assert str(e)
        return
    assert len(resolved) == len(specs) and all(math.isfinite(s.seed) for s in specs)
