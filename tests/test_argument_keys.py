"""Scalar arguments are keyed exactly: no two different calls share an entry."""

from __future__ import annotations

from pathlib import Path

from kwneuro_pydra import Cache, cacheable
from tests._pydra_steps import json_spec


@cacheable(json_spec("rv_as_float"))
def rv_as_float(x: float) -> str:
    return repr(x)


def test_int_for_float_parameter_is_not_merged_with_its_rounded_value(tmp_path: Path) -> None:
    with Cache(tmp_path):
        assert rv_as_float(2**53) == "9007199254740992"
        assert rv_as_float(2**53 + 1) == "9007199254740993"


@cacheable(json_spec("rv_length"))
def rv_length(s: str) -> int:
    return len(s)


def test_astral_character_and_surrogate_pair_have_distinct_keys(tmp_path: Path) -> None:
    with Cache(tmp_path):
        assert rv_length("\U0001f600") == 1
        assert rv_length("\ud83d\ude00") == 2
