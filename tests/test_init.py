"""The package's top level: the main names load lazily, and ``import immulib`` stays cheap."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import immulib


def test_import_immulib_loads_neither_torch_nor_a_submodule():
    code = (
        "import sys, immulib; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('immulib.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", sorted(immulib._NAMES))
def test_main_names_are_the_module_functions(name):
    module, attribute = immulib._NAMES[name]
    assert getattr(immulib, name) is getattr(
        importlib.import_module(f"immulib.{module}"), attribute
    )


def test_immunize_is_the_linear_engine():
    if (Path(immulib.__file__).parent / "linear.py").is_file():
        from immulib import linear

        assert immulib.immunize is linear.immunize and callable(immulib.immunize)
    else:  # before the rename the name is still the module immulib/immunize.py
        assert immulib.immunize is sys.modules["immulib.immunize"]
        assert callable(immulib.immunize.immunize)


def test_every_public_module_is_reachable_and_listed():
    assert {"linalg", "regularizers", "metrics", "reference"} <= set(immulib._MODULES)
    for name in immulib._MODULES:
        if name == "immunize" and callable(immulib.immunize):
            continue  # after the rename the function owns the name
        assert getattr(immulib, name) is importlib.import_module(f"immulib.{name}")
    assert set(immulib.__all__) <= set(dir(immulib))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        immulib.no_such_name  # noqa: B018
