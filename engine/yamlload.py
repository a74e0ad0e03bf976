"""Safe YAML loading that remembers where every key and item came from.

`yaml.SafeLoader` semantics (no tags that build Python objects), plus three things graph
authors need: the line and column of each mapping key and list item for error messages,
duplicate keys reported instead of silently overwritten, and a bound on file size and on
alias expansion so a "billion laughs" file is an error rather than a hang.
"""

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # a graph file is a page of YAML; 1 MiB is generous
MAX_EXPANDED_NODES = 100_000  # YAML nodes after every alias is expanded


class YamlProblem(Exception):
    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


class LocatedDict(dict):
    """A dict that knows the (line, column) of itself and of each of its keys (1-based)."""

    pos: tuple[int, int] = (0, 0)
    key_pos: dict[Any, tuple[int, int]]
    duplicates: list[tuple[Any, tuple[int, int]]]


class LocatedList(list):
    """A list that knows the (line, column) of itself and of each item (1-based)."""

    pos: tuple[int, int] = (0, 0)
    item_pos: list[tuple[int, int]]


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> LocatedDict:  # type: ignore[override]
        self.flatten_mapping(node)
        result = LocatedDict()
        result.pos, result.key_pos, result.duplicates = _pos(node), {}, []
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise YamlProblem("mapping keys must be plain scalars", *_pos(key_node))
            if key in result:
                result.duplicates.append((key, _pos(key_node)))
                continue
            result[key] = self.construct_object(value_node, deep=True)
            result.key_pos[key] = _pos(key_node)
        return result

    def construct_sequence(self, node: SequenceNode, deep: bool = False) -> LocatedList:  # type: ignore[override]
        result = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        result.pos, result.item_pos = _pos(node), [_pos(child) for child in node.value]
        return result


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_sequence)


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """Count nodes as if every alias were copied out, in time linear in distinct nodes."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, ScalarNode):
        size = 1
    elif isinstance(node, SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    else:
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[key] = size
    return size


def load_yaml(text: str) -> Any:
    """Parse YAML text into LocatedDict/LocatedList trees; raise YamlProblem on any fault."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise YamlProblem(f"file is larger than {MAX_BYTES // 1024} KiB; a graph file should be a page of YAML")
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        size = _expanded_size(root, {})
        if size > MAX_EXPANDED_NODES:
            raise YamlProblem(
                f"aliases expand to {size:,} YAML nodes (limit {MAX_EXPANDED_NODES:,}); "
                "is this a 'billion laughs' file?",
                *_pos(root),
            )
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise YamlProblem(
            f"YAML syntax error: {message}", *((mark.line + 1, mark.column + 1) if mark else ())
        ) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"YAML error: {exc}") from None
    except RecursionError:
        raise YamlProblem("YAML nesting is too deep") from None
    finally:
        loader.dispose()


def locate(tree: Any, path: tuple[Any, ...]) -> tuple[int, int] | None:
    """The (line, column) of the deepest element of `path` found in a located tree."""
    found = getattr(tree, "pos", None)
    node = tree
    for step in path:
        if isinstance(node, LocatedDict) and step in node:
            found, node = node.key_pos.get(step, found), node[step]
        elif isinstance(node, LocatedList) and isinstance(step, int) and 0 <= step < len(node):
            found, node = node.item_pos[step], node[step]
        else:
            break
    return found


def plain(tree: Any) -> Any:
    """Strip location info: LocatedDict/LocatedList become dict/list (for JSON and pickling)."""
    if isinstance(tree, dict):
        return {k: plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [plain(v) for v in tree]
    return tree
