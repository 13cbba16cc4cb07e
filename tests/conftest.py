"""Checks over a whole test session, whatever the order the tests ran in.

Every row of the transaction table (``sipguard.sip.transaction.TRANSITIONS``) must be
taken by some test of ``test_sip_transaction.py``, which records the transitions its
tests make. That can only be judged once all of them have run, so it is judged here, at
the end of the session, and only when the session ran the whole module: every test it
defines collected, none deselected (``-k``, ``--deselect``), each one run. A session that
ran part of it, or none, checks nothing. A row never taken fails the session (exit
status 1) and the summary names it.
"""

from __future__ import annotations

from types import ModuleType

import pytest

TABLE_TESTS = "test_sip_transaction.py"


class TableCheck:
    """What the session saw of the module that records the transitions."""

    def __init__(self) -> None:
        self.deselected = False  # some of its tests were deselected
        self.ran: set[str] = set()  # node ids of its tests whose call phase ran
        self.problems: list[str] = []


CHECK = TableCheck()


def _in_table_tests(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1] == TABLE_TESTS


def pytest_deselected(items: list[pytest.Item]) -> None:
    if any(_in_table_tests(item.nodeid) for item in items):
        CHECK.deselected = True


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and _in_table_tests(report.nodeid):
        CHECK.ran.add(report.nodeid)


def _whole_module_ran(session: pytest.Session) -> ModuleType | None:
    """The module, if this session selected every test it defines and ran each one."""
    items = [i for i in session.items if _in_table_tests(i.nodeid)]
    if not items or CHECK.deselected:
        return None
    module = getattr(items[0], "module", None)
    if module is None:
        return None
    defined = {n for n in vars(module) if n.startswith("test_") and callable(vars(module)[n])}
    selected = {i.originalname for i in items if isinstance(i, pytest.Function)}
    if selected != defined or any(i.nodeid not in CHECK.ran for i in items):
        return None
    return module


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    module = _whole_module_ran(session)
    if module is None or not module.RECORDED:
        return
    CHECK.problems = module.unexercised_rows()
    if CHECK.problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CHECK.problems:
        terminalreporter.section("the transaction table", sep="=", red=True, bold=True)
        for line in CHECK.problems:
            terminalreporter.write_line(f"{TABLE_TESTS}: {line}")
