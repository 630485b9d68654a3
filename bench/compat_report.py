"""How much of peft's own test suite passes with peftkit unchanged: runs ``tests/peft_compat`` and counts.

A *behaviour* is one ported check on one case (a test id without its ``lib`` part). It counts when peft,
the reference, passes it; "peftkit passes" when the same check passes against peftkit. Gaps are the
peftkit runs that fail as ``tests/peft_compat/known_gaps.py`` expects (strict xfails), grouped by reason.

    python bench/compat_report.py              # the table, the headline and the gaps
    python bench/compat_report.py --failures   # also every failure no gap row explains (to fill the table)
    python bench/compat_report.py -k quicktour # extra arguments go to pytest

Exit status 0 when every peft run passes (or is skipped because peft itself fails) and every peftkit run
passes or fails as its gap row says; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "peft_compat"


@dataclass
class Run:
    """One test run: a behaviour (gap key) against one library, and how it ended."""

    key: str
    lib: str
    outcome: str  # passed, failed, skipped, xfailed, xpassed
    message: str = ""

    @property
    def area(self) -> str:
        return self.key.split("::")[0].removeprefix("test_").removesuffix(".py")


@dataclass
class Collector:
    """A pytest plugin that keeps one :class:`Run` per test (its setup, call or teardown outcome)."""

    runs: dict[str, Run] = field(default_factory=dict)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if props.get("lib") is None or (report.when != "call" and report.outcome == "passed"):
            return
        run = Run(props["gap_key"], props["lib"], _outcome(report), _message(report))
        previous = self.runs.get(report.nodeid)
        if previous is None or previous.outcome == "passed":
            self.runs[report.nodeid] = run


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


def _message(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return report.wasxfail
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0]
    lines = str(longrepr or "").splitlines()
    return lines[-1] if lines else ""


@dataclass
class Behaviour:
    key: str
    peft: Run | None = None
    peftkit: Run | None = None

    @property
    def counted(self) -> bool:
        return self.peft is not None and self.peft.outcome == "passed"

    @property
    def peftkit_passes(self) -> bool:
        return self.peftkit is not None and self.peftkit.outcome in ("passed", "xpassed")


def behaviours(runs: list[Run]) -> dict[str, Behaviour]:
    out: dict[str, Behaviour] = {}
    for run in runs:
        setattr(out.setdefault(run.key, Behaviour(run.key)), run.lib, run)
    return out


def table(found: dict[str, Behaviour]) -> list[str]:
    by_area: dict[str, list[Behaviour]] = defaultdict(list)
    for b in found.values():
        by_area[b.peft.area if b.peft else b.peftkit.area].append(b)
    header = (
        f"{'area':<24}{'ported':>8}{'peft passes':>13}{'peftkit passes':>16}{'gaps':>6}{'peft cannot':>13}"
    )
    lines = [header, "-" * len(header)]
    totals = Counter()
    for area in sorted(by_area):
        row = _area_counts(by_area[area])
        totals.update(row)
        lines.append(_row(area, row))
    lines += ["-" * len(header), _row("total", totals)]
    return lines


def _area_counts(items: list[Behaviour]) -> Counter:
    counted = [b for b in items if b.counted]
    return Counter(
        ported=len(items),
        peft=len(counted),
        peftkit=sum(b.peftkit_passes for b in counted),
        gaps=sum(not b.peftkit_passes for b in counted),
        peft_cannot=sum(b.peft is not None and b.peft.outcome == "skipped" for b in items),
    )


def _row(name: str, c: Counter) -> str:
    return f"{name:<24}{c['ported']:>8}{c['peft']:>13}{c['peftkit']:>16}{c['gaps']:>6}{c['peft_cannot']:>13}"


def gaps_by_reason(found: dict[str, Behaviour]) -> list[str]:
    reasons: dict[str, list[str]] = defaultdict(list)
    for b in sorted(found.values(), key=lambda b: b.key):
        if b.counted and b.peftkit is not None and b.peftkit.outcome == "xfailed":
            reasons[b.peftkit.message].append(b.key)
    lines = []
    for reason, keys in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  [{len(keys)}] {reason}")
        lines += [f"      {k}" for k in keys]
    return lines


def problems(runs: list[Run]) -> list[str]:
    """Runs that break the suite's contract: a peft failure, an unlisted peftkit failure, a stale row."""
    lines = []
    for run in sorted(runs, key=lambda r: (r.lib, r.key)):
        if run.outcome == "failed":
            lines.append(f"  {run.lib:<8} FAILED  {run.key}: {run.message}")
        elif run.outcome == "xpassed":
            lines.append(f"  {run.lib:<8} PASSES  {run.key}: delete its known_gaps.py row")
    return lines


def peft_cannot(found: dict[str, Behaviour]) -> list[str]:
    return [
        f"  {b.key}: {b.peft.message}"
        for b in sorted(found.values(), key=lambda b: b.key)
        if b.peft is not None and b.peft.outcome == "skipped"
    ]


def report(runs: list[Run], show_failures: bool) -> tuple[list[str], bool]:
    found = behaviours(runs)
    counted = [b for b in found.values() if b.counted]
    passing = sum(b.peftkit_passes for b in counted)
    share = 100.0 * passing / max(len(counted), 1)
    lines = ["peft compatibility suite: " + _versions(), "", *table(found), ""]
    lines.append(f"{passing} of {len(counted)} ported behaviours pass with peftkit unchanged ({share:.1f}%).")
    lines += ["", "Gaps (peftkit, by reason):", *gaps_by_reason(found)]
    skipped = peft_cannot(found)
    if skipped:
        lines += ["", "Not counted, peft itself fails them here:", *skipped]
    bad = problems(runs)
    if bad and show_failures:
        lines += ["", "Runs outside the contract:", *bad]
    elif bad:
        lines += ["", f"{len(bad)} runs outside the contract (rerun with --failures to list them)."]
    return lines, not bad


def _versions() -> str:
    import peft
    import transformers

    return f"peft {peft.__version__}, transformers {transformers.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failures", action="store_true", help="list every run outside the contract")
    args, pytest_args = parser.parse_known_args(argv)
    collector = Collector()
    progress = io.StringIO()
    with contextlib.redirect_stdout(progress):
        code = pytest.main(
            [str(SUITE), "-q", "-p", "no:warnings", "-p", "no:cacheprovider", "--tb=no", "-rN", *pytest_args],
            plugins=[collector],
        )
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(progress.getvalue())
        return 1
    lines, ok = report(list(collector.runs.values()), args.failures)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
