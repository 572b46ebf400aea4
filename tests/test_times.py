"""Times shown by the CLI and the reports: cut at the shown precision, never rounded up."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from cli.output import iso_time
from ledger.times import utc_text
from report.jsonview import rfc3339

DAY_NS = 86_400 * 10**9
LAST_NS_OF_1999 = 946_684_800 * 10**9 - 1


def test_the_last_nanosecond_of_a_day_stays_in_that_day() -> None:
    """Through ``t / 1e9`` a float rounded these to the next millisecond, second and day."""
    assert utc_text(DAY_NS - 1) == "1970-01-01T23:59:59.999Z"
    assert rfc3339(LAST_NS_OF_1999) == "1999-12-31T23:59:59.999Z"
    assert iso_time(LAST_NS_OF_1999) == "1999-12-31T23:59:59.999Z"
    assert utc_text(LAST_NS_OF_1999, "seconds") == "1999-12-31T23:59:59Z"


def test_times_before_1970_and_out_of_range() -> None:
    assert utc_text(-1) == "1969-12-31T23:59:59.999Z"
    assert rfc3339(10**30) is None
    assert iso_time(10**30) == "invalid ('1000000000000000000000000000000')"
    assert iso_time("soon") == "invalid ('soon')"  # type: ignore[arg-type]


@given(st.integers(min_value=-62_135_596_800 * 10**9, max_value=253_402_300_799 * 10**9))
def test_the_shown_millisecond_is_the_floor_of_the_time(t_ns: int) -> None:
    """Oracle by integer arithmetic: the shown milliseconds of the day and the day number."""
    shown = utc_text(t_ns)
    millis = t_ns // 10**6
    day, in_day = divmod(millis, 86_400_000)
    hours, rest = divmod(in_day, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, fraction = divmod(rest, 1000)
    assert shown.endswith(f"T{hours:02}:{minutes:02}:{seconds:02}.{fraction:03}Z")
    ordinal_day = 719_163 + day  # date(1970, 1, 1).toordinal() == 719163
    assert shown.startswith(date.fromordinal(ordinal_day).isoformat())
    assert rfc3339(t_ns) == shown == iso_time(t_ns)
