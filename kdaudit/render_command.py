"""`kdaudit render REPORT_JSON -o report.html`: a report JSON as a self-contained HTML page.

Works offline (no server): the same renderer the API uses for
`GET /v1/audits/{id}/report.html`; `kdaudit report --html` writes its page with `write_html`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kdaudit.command_errors import fail


def write_html(doc: dict[str, Any], out: str | Path, *, audit_id: str | None = None) -> str:
    """Render a report document (dict) and write it to `out` ('-' = stdout); returns the verdict."""
    from kdaudit.distill.report import Report
    from kdaudit.reporting.html_page import render_report_html

    report = Report.model_validate(doc)
    text = render_report_html(report, audit_id=audit_id)
    if str(out) == "-":
        sys.stdout.write(text)
    else:
        Path(out).write_text(text, encoding="utf-8")
    return report.summary.verdict


def cmd_render(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    src = Path(args.report)
    try:
        doc = json.loads(src.read_text(encoding="utf-8"))
    except OSError as e:
        return fail(f"cannot read {src}: {e.strerror or e}", 2)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return fail(f"{src} is not JSON ({e})", 2)
    out = args.out or src.with_suffix(".html")
    try:
        verdict = write_html(doc, out)
    except ValidationError as e:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "document"
        return fail(f"{src} is not a kdaudit.report/v1 report ({e.error_count()} problem(s); first: {where}: {first.get('msg', '')})", 2)
    except OSError as e:
        return fail(f"cannot write {out}: {e.strerror or e}")
    if str(out) != "-":
        print(f"kdaudit: report page written to {out} (verdict: {verdict})", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `render`."""
    p = subparsers.add_parser(
        "render",
        help="render a report JSON as a self-contained HTML page (plots, tables, verdict)",
        description="Render a kdaudit.report/v1 JSON file as one self-contained HTML page: inline CSS and SVG "
        "plots, no network access needed to view it.",
    )
    p.add_argument("report", metavar="REPORT_JSON", help="report file from `kdaudit audit` or `kdaudit report`")
    p.add_argument("-o", "--out", help="HTML file to write ('-' for stdout; default: REPORT_JSON with .html)")
    p.set_defaults(func=cmd_render)

