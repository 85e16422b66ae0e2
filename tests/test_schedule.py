"""Rate schedules over training progress (se_fairseq.core.schedule), against the rates
written out by hand from the documented shapes."""

import pytest

from se_fairseq.core.schedule import Schedule, ScheduleError, check_rates, parse_schedule


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0.3", [(0.0, 0.3), (0.5, 0.3), (1.0, 0.3)]),
        ("constant:0.2", [(0.0, 0.2), (1.0, 0.2)]),
        ("linear:0.3,0.1", [(0.0, 0.3), (0.25, 0.25), (0.5, 0.2), (1.0, 0.1)]),
        ("linear:0.3,0.1@0.5", [(0.0, 0.3), (0.25, 0.2), (0.5, 0.1), (0.9, 0.1)]),
        (
            "steps:0.3,0.15@0.5,0.05@0.8",
            [(0.0, 0.3), (0.4999, 0.3), (0.5, 0.15), (0.79, 0.15), (0.8, 0.05), (1.0, 0.05)],
        ),
        # progress outside [0, 1] is clamped: a resumed run past its planned end keeps the
        # last rate
        ("linear:0.3,0.1", [(-0.5, 0.3), (1.5, 0.1)]),
    ],
)
def test_rates_over_progress(spec, expected):
    schedule = parse_schedule(spec)
    for progress, rate in expected:
        assert schedule(progress) == pytest.approx(rate), (spec, progress)


def test_text_round_trips_and_numbers_are_constants():
    for spec in ("0.3", "linear:0.3,0.05", "linear:0.3,0.05@0.8", "steps:0.3,0.15@0.5,0.05@0.8"):
        assert str(parse_schedule(spec)) == spec
    assert parse_schedule(0.15) == Schedule.constant(0.15) == parse_schedule("constant:0.15")
    assert parse_schedule("steps:0.2,0.2@0.5").is_constant
    assert not parse_schedule("linear:0.3,0.1").is_constant
    assert parse_schedule("steps:0.3,0.15@0.5,0.05@0.8").bounds() == (0.05, 0.3)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fast", "rate 'fast' is not a number"),
        ("cosine:0.3,0.1", "unknown kind 'cosine'"),
        ("linear:0.3", "linear takes START,END[@P]"),
        ("linear:0.3,0.1@1.5", "progress 1.5 must lie in (0, 1]"),
        ("steps:0.3,0.1", "each rate after the first needs @P"),
        ("steps:0.3,0.2@0.6,0.1@0.4", "the progress points must increase"),
        ("constant:0.1,0.2", "constant takes one rate"),
    ],
)
def test_unreadable_schedules_are_refused_with_the_text(spec, message):
    with pytest.raises(ScheduleError) as refused:
        parse_schedule(spec)
    assert message in str(refused.value) and repr(spec) in str(refused.value)


def test_rates_are_checked_against_an_interval():
    check_rates(parse_schedule("steps:0.3,0.01@0.5"), 0.0, 1.0, (False, False))
    with pytest.raises(ScheduleError, match=r"rate 1 must lie in \(0, 1\)"):
        check_rates(parse_schedule("linear:0.3,1"), 0.0, 1.0, (False, False))
    check_rates(parse_schedule("linear:0,1"), 0.0, 1.0, (True, True))
    with pytest.raises(ScheduleError, match=r"rate -0.1 must lie in \[0, 1\]"):
        check_rates(parse_schedule("steps:0,-0.1@0.5"), 0.0, 1.0, (True, True))
