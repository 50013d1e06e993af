"""Helpers for adapter tests: optional imports that skip with the extra to install."""

from __future__ import annotations

import importlib

import pytest


def need(module: str, extra: str):
    """Import ``module`` or skip the test, naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not installed: pip install 'wattmix[{extra}]'")


def free_port() -> int:
    from wattmix.broker import free_port as fp

    return fp("127.0.0.1")
