"""sipstack.native: which hot-path modules run compiled (scripts/build_native.sh)."""

from __future__ import annotations

import importlib

from sipstack.native import NATIVE_MODULES, native_status, native_summary


def test_native_status_names_every_module_and_a_known_state() -> None:
    status = native_status()
    assert list(status) == list(NATIVE_MODULES)
    assert set(status.values()) <= {"compiled", "stale", "python"}
    for name in NATIVE_MODULES:
        importlib.import_module(name)  # each one imports either way


def test_native_summary_is_one_line() -> None:
    text, problem = native_summary()
    assert "\n" not in text and text
    assert problem == ("stale" in native_status().values())


def test_build_script_and_module_list_agree() -> None:
    """scripts/build_native.sh compiles exactly NATIVE_MODULES."""
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "scripts" / "build_native.sh").read_text()
    start = script.index("MODULES=(")
    listed = script[start : script.index(")", start)].split()[1:]
    assert [p.removesuffix(".py").replace("/", ".") for p in listed] == list(NATIVE_MODULES)
