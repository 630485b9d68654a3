"""The ``lib`` fixture (each check runs against ``peft`` and against ``peftkit``) and the gap table's marks.

- Against ``peft``, the reference: a check must pass. Where peft itself raises on this transformers version
  (the exception passes through peft's own code), the case is skipped with peft's error as the reason,
  found by running it, never listed by hand.
- Against an older ``peft`` than a check's behaviour needs (:data:`reference_versions.REFERENCE_SINCE`),
  the ``peft`` leg is skipped with what that release does instead.
- Against ``peftkit``: a case listed in :data:`known_gaps.KNOWN_GAPS` is a strict xfail, so a row whose
  feature has landed fails until it is deleted; every other case must pass.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path

import pytest
from packaging.version import Version

from .known_gaps import KNOWN_GAPS
from .reference_versions import REFERENCE_SINCE

pytest.importorskip("peft")

LIBS = ("peft", "peftkit")
HERE = Path(__file__).parent


@pytest.fixture(params=LIBS)
def lib(request):
    """The library under test, used as ``import peftkit as peft`` would be."""
    return importlib.import_module(request.param)


def lib_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("lib") if callspec is not None else None


def gap_key(item: pytest.Item) -> str:
    """The id a gap row names: ``test_file.py::test_name[case-ids]`` without the ``lib`` part."""
    key = f"{Path(str(item.fspath)).name}::{item.originalname}"
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return key
    parts = callspec.id.split("-")
    parts.remove(callspec.params["lib"])
    return f"{key}[{'-'.join(parts)}]" if parts else key


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keys = set()
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            continue
        key = gap_key(item)
        keys.add(key)
        item.user_properties += [("gap_key", key), ("lib", lib_of(item))]  # read by bench/compat_report.py
        if lib_of(item) == "peftkit" and key in KNOWN_GAPS:
            item.add_marker(pytest.mark.xfail(strict=True, reason=KNOWN_GAPS[key]))
        if lib_of(item) == "peft" and (older := reference_too_old(key.split("[")[0])):
            item.add_marker(pytest.mark.skip(reason=older))
    if _whole_suite_selected(config, items):
        names = {key.split("[")[0] for key in keys}
        stale = sorted(set(KNOWN_GAPS) - keys) + sorted(set(REFERENCE_SINCE) - names)
        if stale:
            raise pytest.UsageError(f"gap/version rows that name no test (delete them): {stale[:10]}")


def reference_too_old(name: str) -> str | None:
    """Why the installed peft cannot be the reference for ``name``, or None when it can."""
    if name not in REFERENCE_SINCE:
        return None
    since, before = REFERENCE_SINCE[name]
    installed = importlib.metadata.version("peft")
    if Version(installed) >= Version(since):
        return None
    return f"peft {installed} predates this behaviour (peft >= {since}): {before}"


def _whole_suite_selected(config: pytest.Config, items: list[pytest.Item]) -> bool:
    if config.option.keyword or config.option.markexpr:
        return False
    files = {Path(str(item.fspath)).name for item in items if HERE in Path(str(item.fspath)).parents}
    return files == {p.name for p in HERE.glob("test_*.py")}


PEFT_DIR = os.path.dirname(importlib.import_module("peft").__file__)


def raised_inside_peft(exc: BaseException) -> bool:
    """True when peft's own code was on the stack where ``exc`` was raised."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(PEFT_DIR + os.sep):
            return True
        tb = tb.tb_next
    return False


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    try:
        return (yield)
    except Exception as exc:
        if lib_of(pyfuncitem) == "peft" and raised_inside_peft(exc):
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            pytest.skip(f"peft itself fails here: {type(exc).__name__}: {first_line}")
        raise
