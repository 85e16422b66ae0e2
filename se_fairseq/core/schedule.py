"""Schedules of a rate over training progress: the mask rate (``--mask-prob``,
``mlm_probability``) and the random share (``--se-random-share``).

Progress ``p`` runs from 0 (the first update) to 1 (the last). A schedule is written as
text, the same on every command line:

- ``0.3`` or ``constant:0.3``: 0.3 throughout;
- ``linear:0.3,0.05``: from 0.3 at p = 0 to 0.05 at p = 1, straight; ``linear:0.3,0.05@0.8``
  reaches 0.05 at p = 0.8 and stays there;
- ``steps:0.3,0.15@0.5,0.05@0.8``: 0.3 from the start, 0.15 from p = 0.5, 0.05 from
  p = 0.8 (mmBERT's 30 % -> 15 % -> 5 %).

A schedule is a pure function of progress, so masks that use it stay a pure function of
(seed, step or epoch, example, scores): a resumed run or another worker gets the same rate.
"""

from collections.abc import Sequence
from dataclasses import dataclass

KINDS = ("constant", "linear", "steps")


@dataclass(frozen=True)
class Rates:
    """The mask rate of a batch (the share of eligible tokens, or words, to select) and the
    share of that budget drawn uniformly (topk and sample)."""

    mask_prob: float
    random_share: float = 0.0


class ScheduleError(ValueError):
    """A schedule that cannot be read (the message names the text and what is wrong)."""


@dataclass(frozen=True)
class Schedule:
    """``kind`` one of KINDS; ``values`` the rates; ``at`` the progress where each value
    starts (steps) or where the last is reached (linear: ``at[1]``)."""

    kind: str
    values: tuple[float, ...]
    at: tuple[float, ...]

    @classmethod
    def constant(cls, value: float) -> "Schedule":
        return cls("constant", (float(value),), (0.0,))

    def __call__(self, progress: float) -> float:
        p = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return self.values[0]
        if self.kind == "linear":
            start, end = self.values
            reach = self.at[1]
            if p >= reach:
                return end
            return start + (end - start) * (p / reach)
        value = self.values[0]
        for rate, begins in zip(self.values, self.at):
            if p >= begins:
                value = rate
        return value

    @property
    def is_constant(self) -> bool:
        return len(set(self.values)) == 1

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest rate the schedule takes."""
        return min(self.values), max(self.values)

    def __str__(self) -> str:
        if self.kind == "constant":
            return f"{self.values[0]:g}"
        if self.kind == "linear":
            text = f"linear:{self.values[0]:g},{self.values[1]:g}"
            return text if self.at[1] == 1.0 else f"{text}@{self.at[1]:g}"
        pieces = [f"{self.values[0]:g}"]
        pieces += [f"{v:g}@{a:g}" for v, a in zip(self.values[1:], self.at[1:])]
        return "steps:" + ",".join(pieces)


def _number(text: str, what: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ScheduleError(f"schedule {spec!r}: {what} {text!r} is not a number") from None


def _progress(text: str, spec: str) -> float:
    value = _number(text, "progress", spec)
    if not 0.0 < value <= 1.0:
        raise ScheduleError(f"schedule {spec!r}: progress {value:g} must lie in (0, 1]")
    return value


def parse_schedule(spec: "str | float | Schedule") -> Schedule:
    """A schedule from its text (module doc), a number (constant) or a Schedule."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, float)):
        return Schedule.constant(spec)
    text = str(spec).strip()
    kind, sep, rest = text.partition(":")
    if not sep:
        return Schedule.constant(_number(text, "rate", text))
    kind = kind.strip()
    if kind not in KINDS:
        raise ScheduleError(
            f"schedule {text!r}: unknown kind {kind!r}; write a number, or "
            "constant:R, linear:START,END[@P] or steps:R0,R1@P1,R2@P2..."
        )
    parts = [p.strip() for p in rest.split(",")]
    if kind == "constant":
        if len(parts) != 1:
            raise ScheduleError(f"schedule {text!r}: constant takes one rate")
        return Schedule.constant(_number(parts[0], "rate", text))
    if kind == "linear":
        if len(parts) != 2:
            raise ScheduleError(f"schedule {text!r}: linear takes START,END[@P]")
        end, _, reach = parts[1].partition("@")
        ends = (_number(parts[0], "rate", text), _number(end, "rate", text))
        return Schedule("linear", ends, (0.0, _progress(reach, text) if reach else 1.0))
    values, at = [_number(parts[0], "rate", text)], [0.0]
    for part in parts[1:]:
        rate, sep, begins = part.partition("@")
        if not sep:
            raise ScheduleError(
                f"schedule {text!r}: each rate after the first needs @P, the progress "
                f"where it starts (got {part!r})"
            )
        values.append(_number(rate, "rate", text))
        at.append(_progress(begins, text))
    if any(b <= a for a, b in zip(at, at[1:])):
        raise ScheduleError(f"schedule {text!r}: the progress points must increase")
    return Schedule("steps", tuple(values), tuple(at))


def check_rates(schedule: Schedule, low: float, high: float, closed: Sequence[bool]) -> None:
    """Raise ScheduleError unless every rate lies in the interval from ``low`` to ``high``
    (``closed``: whether each end is included)."""
    for value in schedule.values:
        below = value < low if closed[0] else value <= low
        above = value > high if closed[1] else value >= high
        if below or above:
            left, right = "[" if closed[0] else "(", "]" if closed[1] else ")"
            raise ScheduleError(
                f"schedule {schedule}: rate {value:g} must lie in {left}{low:g}, {high:g}{right}"
            )


@dataclass(frozen=True)
class RateSchedules:
    """The mask rate's and the random share's schedules of a run."""

    mask_prob: Schedule
    random_share: Schedule

    @classmethod
    def parse(
        cls, mask_prob: "str | float | Schedule", random_share: "str | float | Schedule"
    ) -> "RateSchedules":
        return cls(parse_schedule(mask_prob), parse_schedule(random_share))

    def at(self, progress: float) -> Rates:
        """The rates at ``progress`` (0 = the first update, 1 = the last)."""
        return Rates(self.mask_prob(progress), self.random_share(progress))
