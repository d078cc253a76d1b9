"""Class files (``classes.read_class_file``) and the checks on class names shared by supports and prototype
files."""

import re

import pytest

from geoproto.classes import read_class_file
from geoproto.errors import GeoprotoError


@pytest.mark.parametrize("content, message", [
    ('{"1": "tree", "2": "tree "}', "class name 'tree' is given to ids 1, 2; name each class once"),
    ('{"1": null, "2": "b"}', "class 1 has the name null; name every class with text"),
    ('[{"id": 1, "name": {"name": "a"}}]', 'class 1 has the name {"name": "a"}; name every class'),
    ('{"1": "a", "2": "  "}', "a class has an empty name (id 2); name every class"),
    ('[{"id": 1.7, "name": "a"}, {"id": 2, "name": "b"}]', "class id 1.7 is not a whole number 1..254"),
    ('[{"id": true, "name": "a"}, {"id": 2, "name": "b"}]', "class id true is not a whole number 1..254"),
    ('[{"id": 1, "name": "a", "color": "#-1-1-1"}]',
     'class \'a\' has the colour "#-1-1-1"; write colours as "#RRGGBB"'),
    ('[{"id": 1, "name": "a", "color": "#1234567"}]', 'class \'a\' has the colour "#1234567"'),
    ('[{"id": 1, "name": "a", "color": "#FFF"}]', 'class \'a\' has the colour "#FFF"'),
    ('[{"id": 1, "name": "a", "color": [255, 0, 0]}]', "class 'a' has the colour [255, 0, 0]"),
    ('{}', "lists no class"),
    ('[{"id": 1, "name": "a"}, {"id": 2, "colour": "#3C1098"}]',
     'class 2 of the list ({"id": 2, "colour": "#3C1098"}) has no "name"; expected'),
    ('[{"id": 1, "name": "a", "color": "#3c1098"}, {"id": 2, "name": "b", "color": "3C1098"}]',
     "classes 'a' and 'b' share the colour #3C1098; give each class its own colour"),
    ('{"0": "a", "2": "b"}', "class id 0 outside 1..254 (0 means unlabelled)"),
    ('{"255": "a", "2": "b"}', "class id 255 outside 1..254"),
])
def test_odd_class_files_are_refused_naming_the_class(tmp_path, content, message):
    """Before, a name given to two ids made two classes of one name, null became a class "None", 1.7 and
    true became id 1, "#-1-1-1" the colour (-1, -1, -1) and "#1234567" (18, 52, 86); two classes of one colour
    split a colour mask's pixels of that colour silently."""
    path = tmp_path / "classes.json"
    path.write_text(content)
    with pytest.raises(GeoprotoError, match=f"classes.json: {re.escape(message)}"):
        read_class_file(str(path))


def test_class_file_names_are_stripped_and_ids_may_be_digits(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text('[{"id": "3", "name": " building ", "color": "3c1098"}, {"id": 2, "name": "Building"}]')
    info = read_class_file(str(path))
    assert (info.ids, info.names, info.colors) == ([3, 2], ["building", "Building"], [(0x3C, 0x10, 0x98), None])
    path.write_text('{"10": "water", "9": "tree"}')  # an object's entries in id order
    assert read_class_file(str(path)).ids == [9, 10]


@pytest.mark.parametrize("entry, key", [('"colour": "#3C1098"', "colour"), ('"nmae": "trees"', "nmae")])
def test_a_class_key_the_format_does_not_know_is_warned_about(tmp_path, entry, key):
    """Before, a British "colour" (or a typo) was dropped without a word: the mask's colours then matched
    no class."""
    path = tmp_path / "classes.json"
    path.write_text(f'[{{"id": 1, "name": "building", {entry}}}, {{"id": 2, "name": "tree"}}]')
    with pytest.warns(UserWarning) as caught:
        info = read_class_file(str(path))
    assert [str(w.message) for w in caught] == [f'{path}: class key(s) "{key}" not known, ignored; a class has the '
                                                f'keys "id", "name", "color"']
    assert info.names == ["building", "tree"] and info.colors == [None, None]


def test_a_class_file_key_the_format_does_not_know_is_warned_about(tmp_path):
    """A British "ignore_colour" beside "classes" was dropped without a word: the mask's grey then warned of
    as a colour no class has, or went unlabelled unexplained. The file's own metadata (a "name") is not."""
    path = tmp_path / "classes.json"
    path.write_text('{"name": "dubai", "ignore_colour": "#9B9B9B", "classes": [{"id": 1, "name": "a"}, '
                    '{"id": 2, "name": "b"}]}')
    with pytest.warns(UserWarning) as caught:
        info = read_class_file(str(path))
    assert [str(w.message) for w in caught] == [f'{path}: class file key "ignore_colour" not known, ignored; did you '
                                                f'mean "ignore_color"?']
    assert info.names == ["a", "b"] and info.ignore_color is None


def test_a_class_file_declares_a_colour_that_is_no_class(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text('{"ignore_color": "#000000", "classes": [{"id": 1, "name": "a", "color": "#FF0000"}, '
                    '{"id": 2, "name": "b", "color": "#00FF00"}]}')
    info = read_class_file(str(path))
    assert info.ignore_color == (0, 0, 0) and info.subset([2]).ignore_color == (0, 0, 0)
    path.write_text('{"ignore_color": "black", "classes": {"1": "a", "2": "b"}}')
    with pytest.raises(GeoprotoError, match=re.escape("classes.json: ignore_color: colour 'black' is not #RRGGBB")):
        read_class_file(str(path))
