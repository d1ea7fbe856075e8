"""One teacher cache key trained on two machines can give two teachers: the report counts both."""
from kdbench.report.data import _teacher_id


def test_teachers_with_one_key_and_different_weights_are_two_teachers():
    a = {"teacher": {"key": "paper-mnist-teacher-fashion-mnist-s0-ad5d", "weights_sha256": "8b35ceacdd2e" + "0" * 52}}
    b = {"teacher": {"key": "paper-mnist-teacher-fashion-mnist-s0-ad5d", "weights_sha256": "7f2eccad06aa" + "0" * 52}}
    assert _teacher_id(a) != _teacher_id(b)
    assert _teacher_id(a) == _teacher_id({"teacher": dict(a["teacher"])})
    assert _teacher_id({"teacher": {"key": "k"}}) == "k"  # older records without a checksum keep their identity
