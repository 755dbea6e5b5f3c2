"""The case state machine and its clock as plain functions (``licensing.cases``)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pytest

from tongban.exchange.catalogue.calendar import WorkingCalendar
from tongban.exchange.licensing.cases import (
    ALLOWED,
    Case,
    CaseClock,
    CaseState,
    Move,
    Outcome,
    Overdue,
    apply_move,
)
from tongban.exchange.licensing.errors import CaseTransitionInvalid

CHINA = timezone(timedelta(hours=8))
MONDAY = date(2026, 9, 28)  # 2026-10-01.. are holidays in this calendar
CLOCK = CaseClock(
    WorkingCalendar(holidays=frozenset(date(2026, 10, d) for d in range(1, 8))), CHINA
)
OPENED = datetime.combine(MONDAY, time(10), tzinfo=CHINA)


def _case(state: CaseState) -> Case:
    promised, legal = CLOCK.due_dates(OPENED, 3, 6)
    decided = state in (CaseState.DECIDED, CaseState.DELIVERED)
    return Case(
        number="approval-2026-0000000000",
        item="x-1",
        item_version=1,
        department="approval",
        applicant="91330102MA2K8Q7R1N",
        state=state,
        opened_at=OPENED,
        promised_due_at=promised,
        legal_due_at=legal,
        correction_since=OPENED if state is CaseState.CORRECTION else None,
        decided_at=OPENED if decided else None,
        outcome=Outcome.REFUSED if decided else None,
        refusal_reason="x" if decided else None,
    )


def _move(target: CaseState) -> Move:
    if target is CaseState.DECIDED:
        return Move(target, reason="不符合条件", outcome=Outcome.REFUSED)
    return Move(target, reason="原因")


@pytest.mark.parametrize("state", list(CaseState))
@pytest.mark.parametrize("target", list(CaseState))
def test_exactly_the_listed_moves_are_allowed(state: CaseState, target: CaseState) -> None:
    case = _case(state)
    if target in ALLOWED[state]:
        assert apply_move(case, _move(target), now=OPENED, clock=CLOCK).state is target
    else:
        with pytest.raises(CaseTransitionInvalid) as caught:
            apply_move(case, _move(target), now=OPENED, clock=CLOCK)
        assert caught.value.metadata["state"] == state.value


def test_the_national_day_week_stops_no_clock_that_is_not_running() -> None:
    case = _case(CaseState.ACCEPTED)
    # Tue, Wed, then the holiday week and the weekend: promised on Thursday 8 October.
    assert case.promised_due_at == datetime.combine(date(2026, 10, 8), time.max, tzinfo=CHINA)
    asked = apply_move(case, _move(CaseState.CORRECTION), now=OPENED, clock=CLOCK)
    same_day = apply_move(asked, Move(CaseState.ACCEPTED), now=OPENED, clock=CLOCK)
    assert (same_day.stopped_days, same_day.promised_due_at) == (0, case.promised_due_at)
    # Asked Monday, back on Friday 9 October: Tue, Wed, Thu 8, Fri 9 stopped (4 days).
    back_at = datetime.combine(date(2026, 10, 9), time(9), tzinfo=CHINA)
    back = apply_move(asked, Move(CaseState.ACCEPTED), now=back_at, clock=CLOCK)
    assert back.stopped_days == 4
    assert back.promised_due_at == datetime.combine(date(2026, 10, 14), time.max, tzinfo=CHINA)
    assert CLOCK.overdue(back, back_at) is Overdue.NONE
    assert CLOCK.overdue(back, back.promised_due_at + timedelta(seconds=1)) is Overdue.PROMISED
    assert CLOCK.overdue(back, back.legal_due_at + timedelta(seconds=1)) is Overdue.LEGAL
