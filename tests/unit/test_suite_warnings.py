"""The suite's warning policy (pyproject.toml, filterwarnings): our own warnings fail a test, a
dependency's deprecation never does (testcontainers 4.15 deprecating its own modules made 1055
tests error with a Docker engine running, issue 10)."""

from __future__ import annotations

import warnings

import pytest


def test_a_deprecation_warning_does_not_fail_the_test() -> None:
    warnings.warn("this module is deprecated", DeprecationWarning, stacklevel=1)
    warnings.warn("soon deprecated", PendingDeprecationWarning, stacklevel=1)


def test_other_warnings_still_fail() -> None:
    with pytest.raises(UserWarning):
        warnings.warn("something is off", UserWarning, stacklevel=1)


def test_the_deprecated_testcontainers_module_imports_cleanly() -> None:
    from testcontainers.postgres import PostgresContainer  # warns DeprecationWarning in 4.15

    assert callable(PostgresContainer)
