"""conformance.json and conformance.md from finished results: pure functions, no I/O.

The JSON follows Autobahn's index.json (implementation -> case -> outcome and
details); the Markdown is the matrix a person reads: cases as rows grouped by
section, implementations as columns, then every outcome other than OK with the
requirement, what was expected and what came.
"""

from __future__ import annotations

from typing import Sequence

from .model import OUTCOMES, REQUIREMENTS, SECTIONS, Case, ImplementationRun, Outcome, level_of

LEGEND = ("**OK** meets the requirement; **NON-STRICT** breaks a SHOULD; **FAILED** breaks a MUST; "
          "**INFORMATIONAL** behaviour the specification leaves open, recorded; **UNIMPLEMENTED** an optional "
          "command is missing.")


def to_json(runs: Sequence[ImplementationRun], cases: Sequence[Case], meta: dict) -> dict:
    return {
        "type": "conformance",
        **meta,
        "cases": [{"id": c.id, "title": c.title, "requirement": c.requirement, "level": c.level} for c in cases],
        "implementations": {
            run.name: {"how": run.how, "duration_s": round(run.duration_s, 3), "start_error": run.start_error,
                       "summary": run.counts(),
                       "cases": {case_id: result.as_json() for case_id, result in run.results.items()}}
            for run in runs},
    }


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _shown(outcome: Outcome) -> str:
    return f"**{outcome.value}**" if outcome is Outcome.FAILED else outcome.value


def to_markdown(runs: Sequence[ImplementationRun], cases: Sequence[Case], meta: dict) -> str:
    lines = ["# Conformance to the file protocol", "",
             f"Checked against {meta.get('protocol', 'docs/protocol.md')}: {len(cases)} cases, "
             f"each on connections of its own, a server silent for {meta.get('case_timeout_s', '?')} s failing "
             f"the step it was asked. Run {meta.get('started', '')}, {meta.get('duration_s', 0):.0f} s in all.",
             "", LEGEND, "", "## Summary", "",
             "| implementation | " + " | ".join(o.value for o in OUTCOMES) + " | time | how |",
             "|---|" + "---|" * len(OUTCOMES) + "---|---|"]
    for run in runs:
        counts = run.counts()
        lines.append(f"| {_cell(run.name)} | " + " | ".join(str(counts[o.value]) for o in OUTCOMES)
                     + f" | {run.duration_s:.1f} s | `{_cell(run.how)}` |")
    for run in runs:
        if run.start_error:
            lines += ["", f"{run.name}: {_cell(run.start_error)}"]
    lines += ["", "## Matrix"]
    section = None
    for case in cases:
        if case.section != section:
            section = case.section
            lines += ["", f"### {section}. {SECTIONS.get(section, '')}", "",
                      "| case | requirement | " + " | ".join(_cell(r.name) for r in runs) + " |",
                      "|---|---|" + "---|" * len(runs)]
        cells = [_shown(r.results[case.id].outcome) if case.id in r.results else "-" for r in runs]
        lines.append(f"| {case.id} {_cell(case.title)} | {case.requirement} {case.level} | " + " | ".join(cells)
                     + " |")
    lines += ["", "## Details", "", "Every outcome other than OK, per implementation."]
    for run in runs:
        shown = [(cid, res) for cid, res in run.results.items() if res.outcome is not Outcome.OK]
        lines += ["", f"### {run.name}", ""]
        if not shown:
            lines.append("Every case OK.")
            continue
        titles = {c.id: c.title for c in cases}
        for case_id, result in shown:
            requirement = result.requirement
            lines += [f"**{case_id}** {_cell(titles.get(case_id, ''))}: {_shown(result.outcome)}",
                      f"- requirement {requirement} ({level_of(requirement)}): {REQUIREMENTS[requirement][1]}",
                      f"- expected: {_cell(result.expected)}",
                      f"- actual: {_cell(result.actual)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def summary_line(run: ImplementationRun) -> str:
    counts = run.counts()
    parts = ", ".join(f"{counts[o.value]} {o.value}" for o in OUTCOMES)
    line = f"{run.name}: {sum(counts.values())} cases: {parts} ({run.duration_s:.1f} s)"
    failed = [cid for cid, r in run.results.items() if r.outcome is Outcome.FAILED]
    if failed:
        line += "\n  FAILED: " + ", ".join(failed)
    return line
