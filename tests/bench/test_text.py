"""The report's one table of strings: every English string has its Japanese counterpart."""

import string

import pytest

from qshampoo.bench import optimizers as om
from qshampoo.bench.text import TEXT, t


def fields(s):
    return sorted({f for _, f, _, _ in string.Formatter().parse(s) if f})


@pytest.mark.parametrize("key", sorted(TEXT))
def test_every_english_string_has_its_japanese(key):
    en, ja = TEXT[key]
    assert en.strip() and ja.strip(), key
    assert fields(en) == fields(ja), key


def test_every_optimizer_has_a_label():
    for name in om.REGISTRY:
        assert f"opt.{name}" in TEXT, name
        assert om.label(name, "ja")
    assert om.label("adamw") == "AdamW" and om.label("shampoo4bit") == "4-bit Shampoo"
    assert om.label("my-own") == "my-own"
    with pytest.raises(ValueError, match="unknown language"):
        t("appendix", "fr")
