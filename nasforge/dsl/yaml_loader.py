"""Safe YAML loading that remembers where every key and value came from.

Built on ``yaml.SafeLoader`` (no tag can construct a Python object). Mappings and sequences come back as
:class:`LocDict` / :class:`LocList`, ordinary ``dict``/``list`` subclasses that also carry the location of
themselves, of each key and of each value, so every later error can name file, line and column.
Duplicate keys, which PyYAML silently overwrites, are refused: in a spec they are always a mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nasforge.errors import Location, SpecError

MAX_SPEC_BYTES = 4 * 1024 * 1024


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

    def _loc(self, node: yaml.Node) -> Location:
        mark = node.start_mark
        return Location(self.source_name, mark.line + 1, mark.column + 1)


def _construct_mapping(loader: _LocLoader, node: yaml.MappingNode):
    data = LocDict()
    data.loc = loader._loc(node)
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise SpecError("a mapping key must be a plain scalar", location=loader._loc(key_node),
                            expected="a name", found=type(key).__name__)
        if key in data:
            raise SpecError(f"duplicate key {key!r}", location=loader._loc(key_node),
                            expected="each key once per mapping",
                            found=f"{key!r} again (first at line {data.key_locs[key].line})")
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_locs[key] = loader._loc(key_node)
        data.value_locs[key] = loader._loc(value_node)


def _construct_sequence(loader: _LocLoader, node: yaml.SequenceNode):
    data = LocList()
    data.loc = loader._loc(node)
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.item_locs.append(loader._loc(child))


def _construct_str(loader: _LocLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node).translate(_RESTORE)


_LocLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_LocLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LocLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load_yaml_text(text: str, source_name: str = "<spec>") -> Any:
    """Parse YAML text safely into Loc containers; every YAML problem becomes a located SpecError."""
    if len(text.encode("utf-8", errors="replace")) > MAX_SPEC_BYTES:
        raise SpecError("spec file is too large", location=Location(source_name),
                        expected=f"at most {MAX_SPEC_BYTES} bytes", found=f"{len(text)} characters")
    loader = _LocLoader(protect_expressions(text))
    loader.source_name = source_name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        loc = Location(source_name, mark.line + 1, mark.column + 1) if mark else Location(source_name)
        problem = err.problem or "invalid YAML"
        if "could not determine a constructor" in problem or "tag" in (err.problem or ""):
            raise SpecError("YAML tag refused: specs are plain data and no tag may construct an object",
                            location=loc, expected="plain YAML (mappings, lists, scalars)",
                            found=problem.replace("could not determine a constructor for the tag ", "tag "),
                            ) from None
        context = f" ({err.context})" if err.context else ""
        raise SpecError(f"YAML syntax error: {problem}{context}", location=loc,
                        expected="valid YAML") from None
    except yaml.YAMLError as err:  # errors without a mark (e.g. bad stream encoding)
        raise SpecError(f"YAML error: {err}", location=Location(source_name)) from None
    except RecursionError:
        raise SpecError("YAML nesting is too deep", location=Location(source_name)) from None
    finally:
        loader.dispose()


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
