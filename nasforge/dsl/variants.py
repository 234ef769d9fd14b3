"""Named family members of a spec: ``variants: {resnet34: {set: {...}, paper: {...}}}``.

A paper's family (ResNet-18/34/50, EfficientNet-B0..B7) is one definition with parameters; a variant
names a setting of those parameters and carries that member's published numbers, so tests and the
model zoo hold every member to its own paper figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nasforge.dsl.document import Document, check_name
from nasforge.dsl.serialize import plain
from nasforge.errors import SpecError, did_you_mean

VARIANT_KEYS = ("set", "paper", "doc")


@dataclass(frozen=True)
class Variant:
    """One member of a family: parameter overrides and the paper numbers that hold for it."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)


def variants(doc: Document) -> dict[str, Variant]:
    """The document's variants, structure-checked (parameter names are checked when expanded)."""
    section = doc.section("variants", dict, {})
    out: dict[str, Variant] = {}
    for name, body in section.items():
        check_name(name, "variant", section.key_locs[name])
        loc = section.loc_of(name)
        if not isinstance(body, dict):
            raise SpecError(f"variant {name!r} must be a mapping", location=loc,
                            expected="{set: {PARAM: VALUE}, paper: {...}}", found=repr(body))
        for key in body:
            if key not in VARIANT_KEYS:
                raise SpecError(f"unknown key {key!r} in variant {name!r}", location=body.key_locs[key],
                                expected="one of " + ", ".join(VARIANT_KEYS), found=repr(key),
                                hint=did_you_mean(str(key), VARIANT_KEYS))
        for key in ("set", "paper"):
            if key in body and not isinstance(body[key], dict):
                raise SpecError(f"'{key}' of variant {name!r} must be a mapping", location=body.loc_of(key),
                                expected="a mapping", found=repr(body[key]))
        out[name] = Variant(name, dict(body.get("set") or {}), plain(body.get("paper") or {}))
    return out


def select_variant(doc: Document, name: str) -> Variant:
    """The named variant, or a located error listing the ones the spec defines."""
    table = variants(doc)
    if name not in table:
        raise SpecError(f"spec has no variant {name!r}", location=doc.raw.loc_of("variants"),
                        expected="one of " + (", ".join(table) or "(the spec defines no variants)"),
                        found=repr(name), hint=did_you_mean(name, list(table)))
    return table[name]
