"""What a conformance case is and what it can conclude: pure data, no sockets.

A case checks one requirement of docs/protocol.md (its id begins with that
requirement's number: case 6.1.2 checks requirement 6.1).  It ends in one
outcome, as in Autobahn|Testsuite: a broken MUST is FAILED, a broken SHOULD
NON-STRICT, behaviour the specification leaves open INFORMATIONAL, a missing
optional command UNIMPLEMENTED.  A case that finds a breach raises it as a
:class:`Verdict`, whose outcome follows from the level of the requirement it
names, so a case never decides on its own how grave a breach is.
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional


class Outcome(str, enum.Enum):
    OK = "OK"
    NON_STRICT = "NON-STRICT"
    FAILED = "FAILED"
    INFORMATIONAL = "INFORMATIONAL"
    UNIMPLEMENTED = "UNIMPLEMENTED"


OUTCOMES = tuple(Outcome)

SECTIONS = {"1": "Framing", "2": "Connections", "3": "Names", "4": "Base64", "5": "LIST", "6": "GET",
            "7": "UPLOAD", "8": "DELETE", "9": "STATS", "10": "Errors", "11": "Limits"}

# Requirement number -> (RFC 2119 level, what it asks, in a line).  docs/protocol.md says it in
# full; tests/test_conformance.py checks that the two agree on every number and level.
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "1.1": ("MUST", "a request is UTF-8 text, COMMAND or COMMAND SP ARGUMENT, ended by CR LF CR LF"),
    "1.2": ("MUST", "every complete request gets one reply: a JSON object with a status, then CR LF CR LF"),
    "1.3": ("MUST", "a request split into pieces at any byte is served as if it came whole"),
    "1.4": ("MAY", "command words are accepted in any case"),
    "1.5": ("SHOULD", "blank lines before a request are skipped: an empty request gets no reply"),
    "2.1": ("SHOULD", "a connection carries any number of requests (keep-alive)"),
    "2.2": ("MUST", "a server that serves one request per connection closes it right after the reply"),
    "2.3": ("MUST", "a keep-alive server answers requests sent back to back, in order"),
    "2.4": ("SHOULD", "connections that send nothing do not stop other clients from being served"),
    "2.5": ("MAY", "a LIST, GET, DELETE or STATS sent without the terminator is served after a quiet"),
    "2.6": ("SHOULD", "a connection silent for a long time is closed"),
    "3.1": ("MUST", "a name that reaches outside the served folder is refused, for every command"),
    "3.2": ("SHOULD", "names with a backslash, a control character or over 255 bytes are refused"),
    "3.3": ("MUST", "non-ASCII (UTF-8) names are stored, listed and served exactly"),
    "3.4": ("MUST", "an UPLOAD name ends at the first space; GET and DELETE take the rest of the line"),
    "4.1": ("MUST", "content is standard padded base64 without line breaks"),
    "4.2": ("MUST", "UPLOAD content that is not strict base64 is refused and nothing is stored"),
    "5.1": ("MUST", "LIST answers OK with data, an array of file names (strings)"),
    "5.2": ("MUST", "a completed upload appears in the next LIST"),
    "6.1": ("MUST", "GET of a present file answers OK with the base64 of its exact bytes"),
    "6.2": ("SHOULD", "a GET reply carries the content under data_file and the name under data_namafile"),
    "6.3": ("MUST", "GET of a missing file answers ERROR"),
    "6.4": ("MAY", "a streamed GET whose file read fails after OK is cut by closing"),
    "7.1": ("MUST", "UPLOAD answers OK and stores exactly the decoded bytes, any values, any size within the limit"),
    "7.2": ("MUST", "UPLOAD of an existing name replaces its content"),
    "7.3": ("MUST", "UPLOAD with empty content stores an empty file"),
    "7.4": ("MAY", "an UPLOAD reply carries size and sha256 of what was stored"),
    "7.5": ("MUST", "size and sha256 in an UPLOAD reply, where present, are those of the bytes stored"),
    "7.6": ("MUST", "an upload that did not complete leaves nothing visible and an existing file intact"),
    "7.7": ("MUST", "uploads from several clients at once are each stored exactly"),
    "8.1": ("MAY", "DELETE NAME removes a file"),
    "8.2": ("MUST", "DELETE, where implemented, answers OK and the file is gone from GET and LIST"),
    "8.3": ("MUST", "DELETE, where implemented, of a missing file answers ERROR"),
    "9.1": ("MAY", "STATS reports the server's request counters"),
    "9.2": ("MUST", "STATS, where implemented, answers OK with data {succeeded, failed, connections}: integers >= 0"),
    "9.3": ("SHOULD", "STATS counts each answered request once, and not itself"),
    "10.1": ("MUST", "a well-formed request that cannot be served answers ERROR"),
    "10.2": ("SHOULD", "an ERROR reply says why, as a string under data"),
    "10.3": ("MUST", "a malformed request (not an empty one) answers ERROR or closes the connection"),
    "10.4": ("MUST", "after any bad input the server goes on serving new connections"),
    "10.5": ("MAY", "the connection is closed after an ERROR"),
    "11.1": ("SHOULD", "a request line over the server's limit is refused without waiting for its end"),
    "11.2": ("MUST", "an upload over the server's limit is refused (ERROR or close) and not stored"),
    "11.3": ("MAY", "the number of open connections is limited"),
}

_OUTCOME_OF_LEVEL = {"MUST": Outcome.FAILED, "SHOULD": Outcome.NON_STRICT, "MAY": Outcome.INFORMATIONAL}


def level_of(requirement: str) -> str:
    return REQUIREMENTS[requirement][0]


class Verdict(Exception):
    """A case's conclusion other than OK; raised to end the case.

    ``outcome`` defaults to what breaking ``requirement`` means (FAILED for a MUST...).
    """

    def __init__(self, requirement: str, expected: str, actual: str, outcome: Optional[Outcome] = None) -> None:
        if requirement not in REQUIREMENTS:
            raise ValueError(f"no requirement {requirement} in the specification")
        super().__init__(f"{requirement}: expected {expected}; actual {actual}")
        self.requirement = requirement
        self.expected = expected
        self.actual = actual
        self.outcome = outcome or _OUTCOME_OF_LEVEL[level_of(requirement)]


def breach(requirement: str, expected: str, actual: str) -> Verdict:
    return Verdict(requirement, expected, actual)


def informational(requirement: str, actual: str, expected: str = "behaviour the specification leaves open") -> Verdict:
    return Verdict(requirement, expected, actual, Outcome.INFORMATIONAL)


def unimplemented(requirement: str, expected: str, actual: str) -> Verdict:
    return Verdict(requirement, expected, actual, Outcome.UNIMPLEMENTED)


@dataclass(frozen=True)
class Case:
    """One check: ``run(probe)`` returns a note (or None) when all is well, raises a Verdict if not."""
    id: str
    title: str
    run: Callable[..., Optional[str]]
    bad_input: bool = False       # afterwards the server must still serve a new connection (10.4)
    budget: float = 30.0          # seconds the whole case may take, however the server behaves

    @property
    def requirement(self) -> str:
        return self.id.rsplit(".", 1)[0]

    @property
    def section(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def level(self) -> str:
        return level_of(self.requirement)


@dataclass
class CaseResult:
    case_id: str
    outcome: Outcome
    requirement: str
    expected: str = ""
    actual: str = ""
    note: str = ""                # what an OK case observed worth recording
    duration_s: float = 0.0

    @classmethod
    def of_verdict(cls, case_id: str, verdict: Verdict, duration_s: float) -> "CaseResult":
        return cls(case_id, verdict.outcome, verdict.requirement, verdict.expected, verdict.actual,
                   duration_s=duration_s)

    def as_json(self) -> dict:
        record = {"outcome": self.outcome.value, "requirement": self.requirement,
                  "level": level_of(self.requirement), "expected": self.expected, "actual": self.actual,
                  "duration_s": round(self.duration_s, 3)}
        if self.note:
            record["note"] = self.note
        return record


@dataclass
class ImplementationRun:
    """Every result of one implementation, and how it was reached."""
    name: str
    how: str                      # the command or address, for a reader
    results: dict[str, CaseResult] = field(default_factory=dict)
    duration_s: float = 0.0
    start_error: str = ""

    def counts(self) -> dict[str, int]:
        return summary_counts(self.results.values())

    @property
    def failed(self) -> bool:
        return any(r.outcome is Outcome.FAILED for r in self.results.values())


def summary_counts(results: Iterable[CaseResult]) -> dict[str, int]:
    counts = {outcome.value: 0 for outcome in OUTCOMES}
    for result in results:
        counts[result.outcome.value] += 1
    return counts


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key: 2.10.1 after 2.9.1."""
    return tuple(int(part) for part in case_id.split("."))


def select(cases: Iterable[Case], patterns: Optional[str]) -> list[Case]:
    """Cases whose id matches one of the comma-separated ``patterns`` (``3.*``, ``6.1``, ``7.1.3``).

    A pattern without a wildcard also selects everything under it: ``6.1`` is ``6.1.*``.
    """
    chosen = sorted(cases, key=lambda c: case_key(c.id))
    if not patterns:
        return chosen
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    return [c for c in chosen
            if any(fnmatch.fnmatchcase(c.id, p) or c.id.startswith(p + ".") for p in wanted)]
