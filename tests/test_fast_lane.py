"""The fast lane's guard (tests/conftest.py): a test that starts a process must be marked slow.
Checked on a throwaway test file in pytester's own folder, with this project's conftest."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


@pytest.mark.slow  # the inner tests start `true`, a process
def test_an_unmarked_test_that_starts_a_process_fails(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    slow: starts processes\n")
    pytester.makepyfile(test_inner='''
        import subprocess
        import pytest

        def test_unmarked_starts_one():
            subprocess.run(["true"], check=True)

        @pytest.mark.slow
        def test_marked_starts_one():
            subprocess.run(["true"], check=True)

        def test_unmarked_starts_none():
            assert 1 + 1 == 2
    ''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*test_unmarked_starts_one started 1 process(es) but is not marked*"])
