"""A spec file as a document: its top-level sections checked, its blocks gathered, its imports resolved.

This is the structural layer between YAML and expansion. It knows the language's top-level keys and the
shape of a block definition, resolves ``imports`` relative to the importing file (with cycle detection),
and leaves values untouched: expressions and choices are evaluated later, by :mod:`nasforge.dsl.expand`,
against parameters that callers may override.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasforge.dsl.training_section import training_section
from nasforge.dsl.yaml_loader import LocDict, LocList, kind_of, load_yaml_file, load_yaml_text, shown
from nasforge.errors import Location, SpecError, did_you_mean

TOP_LEVEL_KEYS = ("nasforge", "name", "doc", "paper", "params", "let", "variants", "imports", "inputs",
                  "blocks", "graph", "outputs", "training")
BLOCK_KEYS = ("doc", "args", "let", "inputs", "nodes", "outputs")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REQUIRED_ARG = object()
"""Default of a block argument that callers must pass."""


@dataclass
class BlockDef:
    """A named, reusable sub-graph: arguments with defaults, named inputs, a node list, outputs."""

    name: str
    args: dict[str, Any]
    inputs: list[str]
    nodes: LocList
    outputs: Any
    raw: LocDict
    file: str | None
    arg_locs: dict[str, Location] = field(default_factory=dict)
    """Where each argument's default is written (so an error in a default expression points at it)."""

    @property
    def loc(self) -> Location:
        return self.raw.loc


@dataclass
class Document:
    """One loaded spec file with its imported blocks merged in."""

    raw: LocDict
    path: Path | None
    blocks: dict[str, BlockDef] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return str(self.path) if self.path else "<spec>"

    @property
    def name(self) -> str:
        return str(self.raw.get("name") or (self.path.stem if self.path else "spec"))

    def section(self, key: str, kind: type, default: Any) -> Any:
        """A top-level section, type-checked (mapping or list), or ``default`` when absent."""
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise SpecError(f"section {key!r} has the wrong form", location=self.raw.loc_of(key),
                            expected="a mapping" if kind is dict else "a list",
                            found=kind_of(value))
        return value


def _require_mapping(value: Any, what: str, loc: Location) -> LocDict:
    if not isinstance(value, dict):
        raise SpecError(f"{what} must be a mapping", location=loc, expected="a YAML mapping (key: value)",
                        found=kind_of(value))
    return value  # type: ignore[return-value]


def check_name(name: Any, what: str, loc: Location) -> str:
    """Names of blocks, args, params and inputs are identifiers (so expressions can use them)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(f"invalid {what} name", location=loc,
                        expected="an identifier (letters, digits, underscore; not starting with a digit)",
                        found=shown(name))
    return name


def parse_block(name: str, raw: Any, loc: Location, file: str | None) -> BlockDef:
    """Check a block definition's structure; arguments become ``{name: default or REQUIRED_ARG}``."""
    check_name(name, "block", loc)
    if isinstance(raw, list):  # shorthand: a block that is just a node list
        wrapped = LocDict(nodes=raw)
        wrapped.loc = getattr(raw, "loc", loc)
        wrapped.value_locs["nodes"] = wrapped.loc
        raw = wrapped
    raw = _require_mapping(raw, f"block {name!r}", loc)
    for key in raw:
        if key not in BLOCK_KEYS:
            raise SpecError(f"unknown key {key!r} in block {name!r}", location=raw.key_locs[key],
                            expected="one of " + ", ".join(BLOCK_KEYS), found=shown(key),
                            hint=did_you_mean(str(key), BLOCK_KEYS))
    args: dict[str, Any] = {}
    raw_args = raw.get("args") or []
    items: list[tuple[Any, Any, Location, Location]] = []  # name, default, where named, where the default is
    if isinstance(raw_args, dict):
        items = [(k, v, raw_args.key_locs[k], raw_args.loc_of(k)) for k, v in raw_args.items()]
    elif isinstance(raw_args, list):
        for i, item in enumerate(raw_args):
            item_loc = raw_args.loc_of(i)
            if isinstance(item, dict) and len(item) == 1:
                (k, v), = item.items()
                located = isinstance(item, LocDict)
                items.append((k, v, item.key_locs[k] if located else item_loc,
                              item.loc_of(k) if located else item_loc))
            else:
                items.append((item, REQUIRED_ARG, item_loc, item_loc))
    else:
        raise SpecError(f"args of block {name!r} have the wrong form", location=raw.loc_of("args"),
                        expected="a list of names or a mapping name: default", found=shown(raw_args))
    arg_locs: dict[str, Location] = {}
    for arg, default, arg_loc, default_loc in items:
        check_name(arg, "argument", arg_loc)
        if arg in args:
            raise SpecError(f"argument {arg!r} declared twice in block {name!r}", location=arg_loc,
                            node_path=f"blocks.{name}", expected="each argument once", found=f"{arg!r} again")
        args[arg] = default
        arg_locs[arg] = default_loc
    inputs = raw.get("inputs", ["input"])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise SpecError(f"inputs of block {name!r} have the wrong form", location=raw.loc_of("inputs"),
                        expected="a non-empty list of input names", found=shown(inputs))
    for i, inp in enumerate(inputs):
        check_name(inp, "block input", getattr(inputs, "loc_of", lambda _: loc)(i))
    nodes = raw.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise SpecError(f"block {name!r} has no nodes", location=raw.loc_of("nodes"),
                        expected="a non-empty list of nodes under 'nodes'",
                        found=shown(nodes) if nodes is not None else "nothing")
    return BlockDef(name, args, list(inputs), nodes, raw.get("outputs"), raw, file, arg_locs)


def load_document(source: str | Path, *, text: str | None = None,
                  _stack: tuple[Path, ...] = ()) -> Document:
    """Load a spec (from ``source`` path, or from ``text`` named ``source``) with its imports."""
    path = Path(source) if source is not None else None
    raw = load_yaml_text(text, str(source)) if text is not None else load_yaml_file(path)  # type: ignore[arg-type]
    if raw is None:
        raw = LocDict()
        raw.loc = Location(str(source), 1, 1)
    raw = _require_mapping(raw, "a spec", getattr(raw, "loc", Location(str(source))))
    doc = Document(raw, path.resolve() if path and text is None else path)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise SpecError(f"unknown top-level key {key!r}", location=raw.key_locs[key],
                            expected="one of " + ", ".join(TOP_LEVEL_KEYS), found=shown(key),
                            hint=did_you_mean(str(key), TOP_LEVEL_KEYS))
    version = raw.get("nasforge", 1)
    if version != 1 or isinstance(version, bool):
        raise SpecError("unsupported spec language version", location=raw.loc_of("nasforge"),
                        expected="nasforge: 1", found=shown(version))
    for key, kinds, wanted in (("name", (str, int, float), "text"), ("doc", (str,), "text"),
                               ("paper", (dict,), "a mapping such as {title: ..., year: ...}")):
        value = raw.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise SpecError(f"{key!r} has the wrong form", location=raw.loc_of(key), node_path=key,
                            expected=wanted, found=kind_of(value))
    training_section(raw)  # checked on load: a typo in how to train fails `nasforge check`, not a search
    own_stack = _stack + ((doc.path,) if doc.path else ())
    for imp_loc, imp_path, wanted in _imports(doc):
        _merge_import(doc, imp_loc, imp_path, wanted, own_stack)
    blocks = doc.section("blocks", dict, {})
    for name, body in blocks.items():
        if name in doc.blocks:
            other = doc.blocks[name]
            raise SpecError(f"block {name!r} is defined twice", location=blocks.key_locs[name],
                            expected="unique block names",
                            found=f"also imported from {other.file}:{other.loc.line}")
        doc.blocks[name] = parse_block(name, body, blocks.key_locs[name], doc.file)
    return doc


def _imports(doc: Document) -> list[tuple[Location, Path, list[tuple[str, Location]] | None]]:
    """The ``imports`` section as (location, resolved path, selected block names with their locations,
    or None for all)."""
    section = doc.section("imports", list, [])
    base = doc.path.parent if doc.path else Path.cwd()
    out = []
    for i, item in enumerate(section):
        loc = section.loc_of(i)
        wanted = None
        if isinstance(item, dict):
            unknown = set(item) - {"file", "blocks"}
            if unknown or "file" not in item:
                raise SpecError("an import names a file and optionally its blocks", location=loc,
                                expected="a path, or {file: PATH, blocks: [NAMES]}", found=shown(dict(item)))
            names = item.get("blocks")
            if not isinstance(names, list) or not all(isinstance(w, str) for w in names):
                raise SpecError("import 'blocks' must list block names", location=item.loc_of("blocks"),
                                expected="a list of block names", found=shown(names))
            wanted = [(w, names.loc_of(k) if isinstance(names, LocList) else loc) for k, w in enumerate(names)]
            item = item["file"]
        if not isinstance(item, str) or not item:
            raise SpecError("an import must be a file path", location=loc, expected="a relative path string",
                            found=shown(item))
        out.append((loc, _resolve_import(base, item, loc), wanted))
    return out


def _resolve_import(base: Path, item: str, loc: Location) -> Path:
    """The absolute path of an import that names an existing file; anything else is a located error."""
    try:
        path = (base / item).resolve()
        exists = path.is_file()
    except (OSError, ValueError) as err:  # a NUL byte, a name too long for the file system...
        raise SpecError("an import names an unusable path", location=loc,
                        expected="a spec file path relative to the importing file",
                        found=f"{shown(item)} ({getattr(err, 'strerror', None) or err})") from None
    if not exists:
        raise SpecError(f"imported file not found: {path}", location=loc,
                        expected="a spec file path relative to the importing file", found="no such file")
    return path


def _merge_import(doc: Document, loc: Location, path: Path, wanted: list[tuple[str, Location]] | None,
                  stack: tuple[Path, ...]) -> None:
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack[stack.index(path):], path))
        raise SpecError("import cycle", location=loc, expected="imports that form no cycle",
                        found=chain)
    imported = load_document(path, _stack=stack)
    names = [(name, loc) for name in imported.blocks] if wanted is None else wanted
    for name, name_loc in names:
        if name not in imported.blocks:
            raise SpecError(f"block {name!r} is not defined in {path.name}", location=name_loc,
                            expected="one of " + (", ".join(imported.blocks) or "(no blocks)"), found=shown(name),
                            hint=did_you_mean(name, list(imported.blocks)))
        if name in doc.blocks and doc.blocks[name].file != imported.blocks[name].file:
            raise SpecError(f"block {name!r} is imported twice from different files", location=loc,
                            expected="each block name from one file", found=f"{doc.blocks[name].file} and {imported.blocks[name].file}")
        doc.blocks[name] = imported.blocks[name]
