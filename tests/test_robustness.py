"""The table of bad inputs (docs/robustness.md): every row shows the right behaviour.

    python -m pytest tests/test_robustness.py                                         # the quick rows
    python -m pytest -m slow tests/test_robustness.py                                 # the rows that start processes
    python -m pytest tests/test_robustness.py --robustness-table docs/robustness.md   # every row, and write the table

The rows are declared once, in ``robustness_cases.py``; one test per group of rows asserts each of its
rows, and with ``--robustness-table`` the same run writes the table (slow rows included).
"""

from __future__ import annotations

import time

import pytest
import robustness_cases as cases

GROUPS = [pytest.param(name, id=name, marks=[pytest.mark.robustness_slow] if slow else [])
          for name, (_, slow) in cases.GROUPS.items()]


@pytest.fixture(scope="module")
def table(request, tmp_path_factory):
    """One run of the table in a temporary folder; on teardown, the table is written where
    ``--robustness-table`` says."""
    cases.begin(tmp_path_factory.mktemp("robustness"))
    t0 = time.perf_counter()
    ran: list[str] = []
    yield ran
    path = request.config.getoption("--robustness-table")
    if path:
        missing = [name for name in cases.GROUPS if name not in ran]
        cases.write_table(path, cases.table(list(cases.STATE.rows), time.perf_counter() - t0, missing))


@pytest.mark.parametrize("group", GROUPS)
def test_rows_show_the_right_behaviour(table, group):
    rows = cases.run_group(group)
    table.append(group)
    assert rows, f"group {group!r} made no rows"
    wrong = [f"{r.what}: {r.happened}" for r in rows if not r.ok]
    assert not wrong, "\n".join(wrong)
