"""Compose files -> one merged, interpolated value that can say where each part came from.

`ovctl stack deploy -c a.yml -c b.yml STACK` must refuse bad input by naming the file and line to
edit, also after `${VAR}`s were replaced and files merged. So each file is read as a PyYAML node
tree (`yaml.compose` keeps line marks), the plain values are built here from the nodes recording
"FILE:LINE" per key path, and merging carries those along. Only `load` reads files; the rest is
pure.

The rules are the compose specification's, as `docker stack deploy` applies them:

- Interpolation, per file before merging, of string VALUES (never keys): `$VAR`, `${VAR}` (unset
  -> ""), `${VAR:-default}`, `${VAR:?message}`, `${VAR:+replacement}` and their colon-less forms
  (where only unset counts, not empty), `$$` for `$`; arguments may hold `${...}` again. Any other
  `$` is an error, as in compose, so a typo does not pass silently. Results stay strings
  (`replicas: ${N}` gives "3"): the converter decides what it needs. Variables: `environ`, then
  `.env` beside the FIRST file.
- Merging, later files winning: mappings key by key, scalars and most lists replaced; a service's
  `_CONCATENATED` lists joined (duplicates dropped, order kept); its `_AS_MAPPING` keys turned into
  mappings first (`[K=V, K]` -> `{K: V, K: None}`, networks `[n]` -> `{n: None}`) in every file.
  With a single file nothing is normalised: it keeps the form it was written in. A null never
  erases a mapping or list given earlier; a mapping, list and scalar at one path in two files is
  an error naming both places. Top-level `version:` is obsolete and dropped.
- YAML: the SafeLoader's types (str, int, float, bool, null; dates stay text), anchors, aliases,
  `<<` merge keys; a duplicate key is an error, not a silent "last one wins".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Key = tuple[str | int, ...]
Where = tuple[Path, int]

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str"))
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
_DOTENV_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")
# Values built from one file, aliases counted each time they are used: a small file whose
# aliases nest ("billion laughs") is refused instead of filling the memory.
_MAX_VALUES = 1_000_000

# Service keys merged key by key across files, lists of strings turned into mappings first.
_AS_MAPPING = ("environment", "labels", "deploy.labels", "networks", "sysctls", "extra_hosts")
# Service lists that later files add to rather than replace.
_CONCATENATED = frozenset(
    {
        *("ports", "expose", "dns", "dns_search", "env_file", "cap_add", "cap_drop", "volumes"),
        *("secrets", "configs", "external_links", "links", "security_opt", "devices", "tmpfs"),
    }
)


class ComposeError(ValueError):
    """A compose input problem; str(e) is the whole message a person reads, naming the file, the
    line where known, and the key path (e.g. "stack.yml:12: services.web.ports[0]: ...")."""


def dotted(path: Sequence[str | int]) -> str:
    """A key path as a person writes it: services.web.ports[0]."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


@dataclass(frozen=True)
class Loaded:
    """The merged, interpolated compose value and, per key path, the file and line that gave it
    (a mapping entry's key line, a list item's own line)."""

    data: dict[str, Any]
    files: tuple[Path, ...]
    locations: dict[Key, Where] = field(default_factory=dict, repr=False, compare=False)

    def where(self, *path: str | int) -> str:
        """The "FILE:LINE" of the value at ``path`` or else of its nearest known ancestor; the first
        file alone when nothing is known (so a message can always say which file to open)."""
        for n in range(len(path), 0, -1):
            if found := self.locations.get(tuple(path[:n])):
                return f"{found[0]}:{found[1]}"
        return str(self.files[0]) if self.files else "compose"

    def error(self, msg: str, *path: str | int) -> ComposeError:
        """A ComposeError reading "FILE:LINE: key.path: msg" (no key path when none is given)."""
        at = self.where(*path)
        return ComposeError(f"{at}: {dotted(path)}: {msg}" if path else f"{at}: {msg}")


def load(files: Sequence[Path], environ: Mapping[str, str]) -> Loaded:
    """Read, interpolate and merge ``files`` in order; ComposeError on any problem."""
    if not files:
        raise ComposeError("no compose file given")
    paths = tuple(Path(f) for f in files)
    dotenv = paths[0].parent / ".env"
    env = {**(parse_dotenv(_read(dotenv), dotenv) if dotenv.is_file() else {}), **environ}
    parts = [_load_one(path, env) for path in paths]
    if len(parts) == 1:
        return parts[0]
    for part in parts:
        _normalise(part)
    merged = parts[0]
    for part in parts[1:]:
        merged = _Merger(merged, part).result()
    return merged


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ComposeError(f"{path}: no such file") from None
    except OSError as e:
        raise ComposeError(f"{path}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ComposeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def parse_dotenv(text: str, name: Path) -> dict[str, str]:
    """KEY=VALUE lines (`export ` allowed, quotes removed, `#` comments and blank lines skipped);
    anything else is an error naming ``name`` and the line, rather than a variable lost."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _DOTENV_LINE.fullmatch(line)
        if not m:
            raise ComposeError(f"{name}:{n}: expected KEY=VALUE, got {raw!r}")
        key, value = m.groups()
        if value[:1] in ("'", '"'):
            end = value.find(value[0], 1)
            rest = value[end + 1 :].strip() if end > 0 else ""
            if end < 0 or (rest and not rest.startswith("#")):
                raise ComposeError(f"{name}:{n}: {key}: badly quoted value {value!r}")
            value = value[1:end]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        out[key] = value
    return out


def _load_one(path: Path, env: Mapping[str, str]) -> Loaded:
    """One file's interpolated value and locations."""
    text = _read(path)
    builder = _Builder(path, env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = builder.build(root, ()) if isinstance(root, MappingNode) else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ComposeError(f"{at}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ComposeError(f"{path}: YAML syntax error: {e}") from None
    except RecursionError:
        raise ComposeError(f"{path}: nested too deeply") from None
    if root is None:
        data = {}
    elif data is None:
        kind = "a list" if isinstance(root, SequenceNode) else "a single value"
        raise ComposeError(
            f"{path}:{root.start_mark.line + 1}: the top level must be a mapping "
            f"(services:, networks:, ...), not {kind}"
        )
    data.pop("version", None)
    locations = {k: v for k, v in builder.locations.items() if k[:1] != ("version",)}
    return Loaded(data, (path,), locations)


class _TemplateError(Exception):
    """An interpolation problem, without its place (the builder adds file, line and key path)."""


class _Builder:
    """Plain values from one file's node tree, recording each key path's line and interpolating
    string values on the way."""

    def __init__(self, file: Path, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.locations: dict[Key, Where] = {}
        self._scalars = SafeConstructor()
        self._open: set[int] = set()
        self._count = 0

    def fail(self, node: Node, path: Key, msg: str) -> ComposeError:
        at = f"{self.file}:{node.start_mark.line + 1}"
        return ComposeError(f"{at}: {dotted(path)}: {msg}" if path else f"{at}: {msg}")

    def build(self, node: Node, path: Key) -> Any:
        self._count += 1
        if self._count > _MAX_VALUES:
            raise self.fail(node, path, "too many values: do aliases nest without end?")
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._open:
            raise self.fail(node, path, "an alias refers to a node that contains it")
        self._open.add(id(node))
        try:
            if isinstance(node, MappingNode) and node.tag == _TAG + "map":
                return self._mapping(node, path)
            if isinstance(node, SequenceNode) and node.tag == _TAG + "seq":
                return self._sequence(node, path)
            raise self.fail(node, path, f"unsupported YAML tag {node.tag}")
        finally:
            self._open.discard(id(node))

    def _scalar(self, node: ScalarNode, path: Key) -> Any:
        if node.tag == _TAG + "timestamp":
            return node.value  # compose has no dates: keep the text
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, path, f"unsupported YAML tag {node.tag}")
        value = self._scalars.construct_object(node)
        if not isinstance(value, str):
            return value
        try:
            return interpolate(value, self.env)
        except _TemplateError as e:
            raise self.fail(node, path, str(e)) from None

    def _sequence(self, node: SequenceNode, path: Key) -> list[Any]:
        out = []
        for i, item in enumerate(node.value):
            self.locations[(*path, i)] = (self.file, item.start_mark.line + 1)
            out.append(self.build(item, (*path, i)))
        return out

    def _mapping(self, node: MappingNode, path: Key) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, (key_node, value_node) in self._entries(node, path, frozenset()).items():
            self.locations[(*path, key)] = (self.file, key_node.start_mark.line + 1)
            out[key] = self.build(value_node, (*path, key))
        return out

    def _entries(
        self, node: MappingNode, path: Key, within: frozenset[int]
    ) -> dict[str, tuple[Node, Node]]:
        """key -> (key node, value node) with `<<` applied as YAML says: the mapping's own keys
        win over merged ones, an earlier merged mapping over a later one."""
        own: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                many = isinstance(value_node, SequenceNode)
                for source in value_node.value if many else [value_node]:
                    if not isinstance(source, MappingNode):
                        raise self.fail(value_node, path, "<< merges mappings only")
                    if id(source) in within or source is node:
                        raise self.fail(value_node, path, "<< merges a mapping into itself")
                    for k, pair in self._entries(source, path, within | {id(node)}).items():
                        merged.setdefault(k, pair)
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, path, "a key must be a plain value")
            key = str(key_node.value)  # the text as written: `80:` is "80", `on:` is "on"
            if key in own:
                first = own[key][0].start_mark.line + 1
                raise self.fail(key_node, (*path, key), f"duplicate key (first at line {first})")
            own[key] = (key_node, value_node)
        return {**merged, **own}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with its `$VAR` / `${...}` forms replaced from ``env`` and `$$` made `$`."""
    out: list[str] = []
    i = 0
    while (j := text.find("$", i)) >= 0:
        out.append(text[i:j])
        after = text[j + 1 : j + 2]
        if after == "$":
            out.append("$")
            i = j + 2
        elif after == "{":
            value, i = _braced(text, j + 2, env)
            out.append(value)
        elif m := _NAME.match(text, j + 1):
            out.append(env.get(m.group(), ""))
            i = m.end()
        else:
            raise _TemplateError(_invalid(text))
    out.append(text[i:])
    return "".join(out)


def _invalid(text: str) -> str:
    return f"invalid interpolation format in {text!r} (a literal $ is written $$)"


def _braced(text: str, start: int, env: Mapping[str, str]) -> tuple[str, int]:
    """The value of the `${...}` whose name starts at ``start``, and the index after its `}`."""
    m = _NAME.match(text, start)
    if not m:
        raise _TemplateError(_invalid(text))
    name, i = m.group(), m.end()
    if text.startswith("}", i):
        return env.get(name, ""), i + 1
    op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
    end = _closing(text, i + len(op)) if op else -1
    if op is None or end < 0:
        raise _TemplateError(_invalid(text))
    arg = text[i + len(op) : end]
    value = env.get(name)
    present = bool(value) if op.startswith(":") else value is not None
    if op.endswith("-"):
        return (value if present and value is not None else interpolate(arg, env)), end + 1
    if op.endswith("+"):
        return (interpolate(arg, env) if present else ""), end + 1
    if present and value is not None:
        return value, end + 1
    message = interpolate(arg, env)
    raise _TemplateError(
        f"required variable {name} is missing a value" + (f": {message}" if message else "")
    )


def _closing(text: str, i: int) -> int:
    """Index of the `}` closing a `${` whose argument starts at ``i`` (nested `${}` skipped)."""
    depth = 0
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def _normalise(part: Loaded) -> None:
    """Turn the `_AS_MAPPING` lists of every service of one file into mappings (in place, with
    the locations moved from list indexes to keys), so that files merge key by key."""
    services = part.data.get("services")
    if not isinstance(services, dict):
        return
    for name, svc in services.items():
        for dotted_key in _AS_MAPPING:
            key = dotted_key.split(".")
            parent = svc
            for k in key[:-1]:
                parent = parent.get(k) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and isinstance(parent.get(key[-1]), list):
                parent[key[-1]] = _as_mapping(part, parent[key[-1]], ("services", name, *key))


def _as_mapping(part: Loaded, items: list[Any], path: Key) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise part.error("expected a string", *path, i)
        if path[-1] == "networks":
            key, value = item, None
        elif path[-1] == "extra_hosts":
            key, _, value = item.partition("=" if "=" in item else ":")
        else:
            key, sep, text = item.partition("=")
            value = text if sep else None
        out[key] = value
        if found := part.locations.pop((*path, i), None):
            part.locations[(*path, key)] = found
    return out


def _under(locations: Mapping[Key, Where], prefix: Key) -> Iterator[tuple[Key, Where]]:
    n = len(prefix)
    return ((k, v) for k, v in locations.items() if k[:n] == prefix)


def _kind(value: Any) -> str:
    return "mapping" if isinstance(value, dict) else "list" if isinstance(value, list) else "scalar"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return {"mapping": "a mapping", "list": "a list"}.get(_kind(value), "a string")


class _Merger:
    """``over`` (one file) merged onto ``base`` (the files before it), locations included: every
    value keeps the location the file that provided it gave it."""

    def __init__(self, base: Loaded, over: Loaded) -> None:
        self.base = base
        self.over = over
        self.locations = dict(base.locations)

    def result(self) -> Loaded:
        data = self._mapping(self.base.data, self.over.data, ())
        return Loaded(data, self.base.files + self.over.files, self.locations)

    def _mapping(self, old: dict[str, Any], new: dict[str, Any], path: Key) -> dict[str, Any]:
        out = dict(old)
        for key, value in new.items():
            if key in out:
                out[key] = self._value(out[key], value, (*path, key))
            else:
                out[key] = value
                self.locations.update(_under(self.over.locations, (*path, key)))
        return out

    def _value(self, old: Any, new: Any, path: Key) -> Any:
        if new is None and isinstance(old, dict | list):
            return old  # an empty entry does not erase what an earlier file gave
        if old is not None and _kind(old) != _kind(new) and new is not None:
            raise self.over.error(
                f"is {_describe(new)} here but {_describe(old)} in {self.base.where(*path)}", *path
            )
        if isinstance(old, dict) and isinstance(new, dict):
            self._relocate(path)
            return self._mapping(old, new, path)
        if isinstance(old, list) and isinstance(new, list) and _joins(path):
            return self._concatenate(old, new, path)
        self._forget(path)
        self.locations.update(_under(self.over.locations, path))
        return new

    def _concatenate(self, old: list[Any], new: list[Any], path: Key) -> list[Any]:
        out: list[Any] = []
        moved: dict[Key, Where] = {}
        for source, items in ((self.base.locations, old), (self.over.locations, new)):
            for i, item in enumerate(items):
                if item in out:
                    continue
                for k, v in _under(source, (*path, i)):
                    moved[(*path, len(out), *k[len(path) + 1 :])] = v
                out.append(item)
        self._forget(path)
        self._relocate(path)
        self.locations.update(moved)
        return out

    def _relocate(self, path: Key) -> None:
        """Point ``path`` itself at the later file (its own line), when it gave one."""
        if found := self.over.locations.get(path):
            self.locations[path] = found

    def _forget(self, path: Key) -> None:
        for k in [k for k, _ in _under(self.locations, path)]:
            del self.locations[k]


def _joins(path: Key) -> bool:
    """Whether the list at ``path`` is one that later files add to (services.NAME.KEY)."""
    return len(path) == 3 and path[0] == "services" and path[2] in _CONCATENATED
