"""Safe YAML with positions: no Python objects, no alias bombs, every key located."""

import pytest

from capgraph.engine.yamlload import MAX_BYTES, YamlProblem, load_yaml, locate, plain


def test_keys_and_items_keep_their_line_and_column() -> None:
    tree = load_yaml("a:\n  b: [1, 2]\n  c:\n    - x\n    - y\n")
    assert locate(tree, ("a", "b")) == (2, 3)
    assert locate(tree, ("a", "c", 1)) == (5, 7)
    assert locate(tree, ("a", "missing")) == (1, 1)  # the deepest known place
    assert plain(tree) == {"a": {"b": [1, 2], "c": ["x", "y"]}}


def test_duplicate_keys_are_kept_for_reporting_not_overwritten() -> None:
    tree = load_yaml("a: 1\na: 2\n")
    assert tree["a"] == 1 and tree.duplicates == [("a", (2, 1))]


def test_python_tags_are_refused() -> None:
    with pytest.raises(YamlProblem, match="could not determine a constructor"):
        load_yaml("x: !!python/object/apply:os.system ['true']\n")


def test_billion_laughs_is_an_error_and_fast() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(YamlProblem, match="billion laughs"):
        load_yaml("\n".join(lines))


def test_anchors_and_aliases_within_bounds_work() -> None:
    tree = load_yaml("nodes: &n {a: 1}\napplications: [{args: {nodes: *n}}]\n")
    assert tree["applications"][0]["args"]["nodes"] == {"a": 1}


def test_oversized_files_are_refused() -> None:
    with pytest.raises(YamlProblem, match="larger than"):
        load_yaml("# " + "x" * MAX_BYTES)
