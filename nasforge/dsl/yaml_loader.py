"""Safe YAML loading that remembers where every key and value came from.

Built on ``yaml.SafeLoader`` (no tag can construct a Python object). Mappings and sequences come back as
:class:`LocDict` / :class:`LocList`, ordinary ``dict``/``list`` subclasses that also carry the location of
themselves, of each key and of each value, so every later error can name file, line and column.
Duplicate keys, which PyYAML silently overwrites, are refused: in a spec they are always a mistake.
So are the tags that build something other than plain data (``!!binary``, ``!!set``, ``!!omap``, any
``!!python/...`` or local tag), strings that are not valid Unicode text, and aliases that expand a small
file into a huge document. Dates are not a spec type: an unquoted ``2016-06-01`` stays a string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from nasforge.errors import Location, SpecError

MAX_SPEC_BYTES = 4 * 1024 * 1024
MAX_EXPANDED_ITEMS = 1_000_000
"""Most keys, values and items a document may hold once YAML aliases are expanded (a "billion laughs" guard)."""
MAX_NESTING = 100
"""Deepest nesting of mappings and lists. Real specs stay under ten levels; the bound keeps every recursive
consumer (the YAML composer, expansion, ``to_yaml``) far from Python's recursion limit, wherever it is
called from."""
_REFUSED = "YAML tag refused: specs are plain data and no tag may construct an object"


class LocDict(dict):
    """A mapping with ``loc`` (of the mapping), ``key_locs`` and ``value_locs`` (per key)."""

    loc: Location
    key_locs: dict[Any, Location]
    value_locs: dict[Any, Location]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loc = Location()
        self.key_locs = {}
        self.value_locs = {}

    def loc_of(self, key: Any) -> Location:
        """Where the value of ``key`` is written (or the mapping itself, if the key is absent)."""
        return self.value_locs.get(key, self.loc)


class LocList(list):
    """A sequence with ``loc`` (of the sequence) and ``item_locs`` (per item)."""

    loc: Location
    item_locs: list[Location]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.loc = Location()
        self.item_locs = []

    def loc_of(self, index: int) -> Location:
        return self.item_locs[index] if 0 <= index < len(self.item_locs) else self.loc


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it: its repr, shortened (a spec value may be large)."""
    if isinstance(value, LocList):
        value = list(value)
    elif isinstance(value, LocDict):
        value = dict(value)
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def kind_of(value: Any) -> str:
    """What kind of YAML value the author wrote, in their terms (for 'found: ...')."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return f"text {shown(value)}"


def location_of(value: Any, fallback: Location | None = None) -> Location:
    """The location a loaded container carries, or ``fallback``."""
    return getattr(value, "loc", None) or fallback or Location()


# YAML's flow style ({a: 1}) ends a plain scalar at , [ ] { } and ": ", so an expression such as
# ${max(dims[0], 4 * dim)} could not be written unquoted inside a one-line node. Before parsing, those
# characters inside ${...} are swapped for private-use code points of the same length (columns stay
# exact), and swapped back when scalars are constructed.
_PROTECT = str.maketrans({"{": "\ue000", "}": "\ue001", ",": "\ue002", "[": "\ue003", "]": "\ue004",
                          ":": "\ue005", "#": "\ue006"})
_RESTORE = str.maketrans({v: k for k, v in {"{": "\ue000", "}": "\ue001", ",": "\ue002", "[": "\ue003",
                                             "]": "\ue004", ":": "\ue005", "#": "\ue006"}.items()})


def protect_expressions(text: str) -> str:
    """Hide flow indicators inside each single-line ``${...}`` from the YAML scanner (same length)."""
    out = []
    pos = 0
    while True:
        start = text.find("${", pos)
        if start < 0:
            break
        depth, end = 0, -1
        for j in range(start + 1, len(text)):
            ch = text[j]
            if ch == "\n":
                break
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
        if end < 0:
            out.append(text[pos:start + 2])
            pos = start + 2
            continue
        out.append(text[pos:start + 1])
        out.append(text[start + 1:end + 1].translate(_PROTECT))
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


class _LocLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences keep their source marks."""

    source_name: str = "<spec>"
    depth: int = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose with a depth bound, so deep nesting is a located error and not a RecursionError."""
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise SpecError("YAML nesting is too deep",
                                location=Location(self.source_name, mark.line + 1, mark.column + 1),
                                expected=f"at most {MAX_NESTING} levels of mappings and lists",
                                found="deeper nesting")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _loc(self, node: yaml.Node) -> Location:
        """Where a node starts; for a quoted scalar, its first character inside the quotes, so that
        offsets into the string (expression errors) land on the right column."""
        mark = node.start_mark
        quoted = isinstance(node, yaml.ScalarNode) and node.style in ("'", '"')
        return Location(self.source_name, mark.line + 1, mark.column + 1 + quoted)


_NODE_KINDS = {"scalar": "a plain value", "sequence": "a list", "mapping": "a mapping"}


def _tag_name(tag: str | None) -> str:
    """``tag:yaml.org,2002:str`` -> ``!!str``, as the author wrote it."""
    prefix = "tag:yaml.org,2002:"
    return "!!" + tag[len(prefix):] if tag and tag.startswith(prefix) else str(tag)


def _require_node(loader: _LocLoader, node: yaml.Node, kind: str) -> None:
    """An explicit tag (``!!map x``) can put a node of the wrong kind under a constructor."""
    if node.id != kind:
        raise SpecError(f"tag '{_tag_name(node.tag)}' needs {_NODE_KINDS[kind]}", location=loader._loc(node),
                        expected=_NODE_KINDS[kind], found=_NODE_KINDS.get(node.id, node.id))


def _construct_mapping(loader: _LocLoader, node: yaml.MappingNode):
    _require_node(loader, node, "mapping")
    data = LocDict()
    data.loc = loader._loc(node)
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise SpecError("a mapping key must be a plain scalar", location=loader._loc(key_node),
                            expected="a name", found=_NODE_KINDS.get(key_node.id, key_node.id))
        if key in data:
            raise SpecError(f"duplicate key {key!r}", location=loader._loc(key_node),
                            expected="each key once per mapping",
                            found=f"{key!r} again (first at line {data.key_locs[key].line})")
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_locs[key] = loader._loc(key_node)
        data.value_locs[key] = loader._loc(value_node)


def _construct_sequence(loader: _LocLoader, node: yaml.SequenceNode):
    _require_node(loader, node, "sequence")
    data = LocList()
    data.loc = loader._loc(node)
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.item_locs.append(loader._loc(child))


def _construct_str(loader: _LocLoader, node: yaml.Node) -> str:
    _require_node(loader, node, "scalar")
    text = loader.construct_scalar(node).translate(_RESTORE)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SpecError("string is not valid Unicode text", location=loader._loc(node),
                        expected="text without lone surrogate code points",
                        found=f"{text[err.start]!r} at offset {err.start}") from None
    return text


def _checked_scalar(kind: str):
    """SafeLoader's constructor for ``kind``, with a located error for an explicit tag on a bad value."""
    construct = yaml.SafeLoader.yaml_constructors[f"tag:yaml.org,2002:{kind}"]

    def run(loader: _LocLoader, node: yaml.Node) -> Any:
        _require_node(loader, node, "scalar")
        try:
            return construct(loader, node)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError):
            raise SpecError(f"value tagged '!!{kind}' is not a valid {kind}", location=loader._loc(node),
                            expected=f"a literal of type {kind}", found=repr(node.value)) from None
    return run


def _refuse_tag(loader: _LocLoader, node: yaml.Node) -> Any:
    raise SpecError(_REFUSED, location=loader._loc(node), expected="plain YAML (mappings, lists, scalars)",
                    found=f"tag '{_tag_name(node.tag)}'")


_LocLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_LocLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LocLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
for _kind in ("int", "float", "bool", "null"):
    _LocLoader.add_constructor(f"tag:yaml.org,2002:{_kind}", _checked_scalar(_kind))
# '=' and '<<' standing alone as values, and unquoted dates, are plain text in a spec
for _kind in ("value", "merge", "timestamp"):
    _LocLoader.add_constructor(f"tag:yaml.org,2002:{_kind}", _construct_str)
for _kind in ("binary", "omap", "pairs", "set"):
    _LocLoader.add_constructor(f"tag:yaml.org,2002:{_kind}", _refuse_tag)
_LocLoader.add_constructor(None, _refuse_tag)


def _check_expanded_size(data: Any, source_name: str) -> None:
    """Refuse documents that aliases make too large (MAX_EXPANDED_ITEMS) or too deep (MAX_NESTING):
    an alias placed deep inside another value adds its own depth."""
    sizes: dict[int, tuple[int, int]] = {}  # id -> (items, depth), each container computed once
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        item, done = stack.pop()
        if not isinstance(item, (dict, list)) or (id(item) in sizes and not done):
            continue
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        if not done:
            stack.append((item, True))
            stack.extend((c, False) for c in children)
            continue
        measured = [sizes.get(id(c), (1, 0)) for c in children]
        size, depth = 1 + sum(m[0] for m in measured), 1 + max((m[1] for m in measured), default=0)
        sizes[id(item)] = (size, depth)
        if size > MAX_EXPANDED_ITEMS or depth > MAX_NESTING:
            deep = depth > MAX_NESTING
            raise SpecError(f"the spec is too {'deep' if deep else 'large'} once its YAML aliases are expanded",
                            location=location_of(item, Location(source_name)),
                            expected=f"at most {MAX_NESTING} levels of mappings and lists" if deep else
                            f"at most {MAX_EXPANDED_ITEMS:,} keys, values and items",
                            found="aliases nested inside aliases")


def _text_at(text: str, mark: yaml.Mark) -> str:
    """What the YAML reader saw where it stopped: the rest of that line, shortened."""
    if mark.index >= len(text.rstrip()):
        return "the end of the file"
    lines = text.split("\n")
    rest = lines[mark.line][mark.column:] if mark.line < len(lines) else ""
    if not rest.strip():
        return "the end of the line"
    return repr(rest if len(rest) <= 40 else rest[:37] + "...")


def load_yaml_text(text: str, source_name: str = "<spec>") -> Any:
    """Parse YAML text safely into Loc containers; every YAML problem becomes a located SpecError."""
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise SpecError("spec file is too large", location=Location(source_name),
                        expected=f"at most {MAX_SPEC_BYTES} bytes", found=f"{len(text)} characters")
    loader = None
    try:
        loader = _LocLoader(protect_expressions(text))
        loader.source_name = source_name
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        loc = Location(source_name, mark.line + 1, mark.column + 1) if mark else Location(source_name)
        problem = err.problem or "invalid YAML"
        if "recursive" in problem:
            raise SpecError("a YAML alias refers to the value that contains it", location=loc,
                            expected="aliases (*name) of values defined before and outside them",
                            found="a recursive alias") from None
        message = problem
        if err.context:
            started = err.context_mark
            where = (f" started at line {started.line + 1}, column {started.column + 1}"
                     if started and err.problem_mark and started.line != err.problem_mark.line else "")
            message = (f"{err.context}{where}, {problem}" if problem.startswith("but ")
                       else f"{problem} ({err.context}{where})")
        wanted = re.match(r"(?:did not find |could not find )?expected (.+?)(?:, but |$)", problem)
        raise SpecError(f"YAML syntax error: {message}", location=loc,
                        expected=wanted.group(1) if wanted else "valid YAML",
                        found=_text_at(text, mark) if mark else None) from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow: locate it in the text
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise SpecError(f"YAML syntax error: {err.reason}", location=Location(source_name, line, column),
                        expected="printable characters", found=f"character {chr(err.character)!r}"
                        if isinstance(err.character, int) else repr(err.character)) from None
    except yaml.YAMLError as err:  # errors without a mark
        raise SpecError(f"YAML error: {err}", location=Location(source_name)) from None
    except RecursionError:
        raise SpecError("YAML nesting is too deep", location=Location(source_name),
                        expected="nesting a few hundred levels deep at most", found="deeper") from None
    finally:
        if loader is not None:
            loader.dispose()
    _check_expanded_size(data, source_name)
    return data


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a spec file; a missing or unreadable file is a SpecError, not an OSError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"file not found: {p}", location=Location(str(p)),
                        expected="an existing spec file", found="no such file") from None
    except IsADirectoryError:
        raise SpecError(f"not a file: {p}", location=Location(str(p)),
                        expected="a YAML spec file", found="a directory") from None
    except UnicodeDecodeError as err:
        raise SpecError("spec file is not UTF-8 text", location=Location(str(p)),
                        expected="UTF-8 YAML", found=str(err)) from None
    except OSError as err:
        raise SpecError(f"cannot read {p}: {err.strerror}", location=Location(str(p))) from None
    return load_yaml_text(text, str(p))
