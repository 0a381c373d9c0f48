"""The suite-wide rule: a skipped integration test is reported as a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def test_skipped_integration_test_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    integration: real stack\n"
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.integration
        def test_needs_kafka():
            pytest.skip("kafka not running")

        def test_unit_may_skip():
            pytest.skip("not on this platform")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*integration test was skipped*kafka not running*"])
