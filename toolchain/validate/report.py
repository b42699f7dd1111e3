"""Validation reports: report.json (everything), junit.xml (for CI), summary.md (for people)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from edgesmith.toolchain.core.report import write_report
from edgesmith.toolchain.evaluate.gate import GateResult

JUNIT = "junit.xml"
SUMMARY = "summary.md"


@dataclass
class ValidateReport:
    """report.json of the validate stage: both models (path, format, sha256, size, batch-1
    latency), the data, the gated metrics, and the gate's verdict with every check."""

    candidate: dict[str, Any]
    reference: dict[str, Any]
    data: dict[str, Any]
    gated_metrics: list[str]
    passed: bool
    verdict: str
    checks: list[dict[str, Any]]
    name: str = "validate"


def write_reports(out: Path, gate: GateResult, report: ValidateReport) -> dict[str, Any]:
    """report.json, junit.xml and summary.md; returns what report.json holds."""
    data = write_report(out, report)
    _junit(out / JUNIT, gate, report.name)
    (out / SUMMARY).write_text(markdown(data))
    return data


def _junit(path: Path, gate: GateResult, name: str) -> None:
    gated = gate.gated
    suite = ET.Element(
        "testsuite",
        name=f"edgesmith.{name}",
        tests=str(len(gated)),
        failures=str(sum(not c.passed for c in gated)),
    )
    for c in gated:
        v = c.value
        case = ET.SubElement(
            suite, "testcase", classname=f"edgesmith.{name}", name=f"{v.metric}[{v.output}]"
        )
        text = (
            f"reference {v.reference:.6f}, candidate {v.candidate:.6f}, "
            f"drop {v.drop:.6f}, budget {c.budget}"
        )
        if c.passed:
            ET.SubElement(case, "system-out").text = text
        else:
            ET.SubElement(
                case, "failure", message=f"drop {v.drop:.6f} > budget {c.budget}"
            ).text = text
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def markdown(report: dict[str, Any]) -> str:
    cand, ref = report["candidate"], report["reference"]
    lines = [
        f"# Validation: {'PASS' if report['passed'] else 'FAIL'}",
        "",
        f"- candidate: `{cand['path']}` ({cand['format']})",
        f"- reference: `{ref['path']}` ({ref['format']})",
        f"- data: `{report['data']['path']}`, {report['data']['samples']} samples",
        f"- verdict: {report['verdict']}",
        "",
        "| metric | output | reference | candidate | drop | budget | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report["checks"]:
        result = {True: "pass", False: "**FAIL**", None: "-"}[c["passed"]]
        lines.append(
            f"| {c['metric']} | {c['output']} | {c['reference']:.4f} | {c['candidate']:.4g} | "
            f"{c['drop']:.4g} | {'-' if c['budget'] is None else c['budget']} | {result} |"
        )
    lines += [
        "",
        "| model | latency p50, batch 1 (ms) | size (MB) |",
        "|---|---|---|",
        f"| reference | {ref['latency_ms']['p50']:.3f} | {ref['size_bytes'] / 1e6:.3f} |",
        f"| candidate | {cand['latency_ms']['p50']:.3f} | {cand['size_bytes'] / 1e6:.3f} |",
    ]
    return "\n".join(lines) + "\n"
