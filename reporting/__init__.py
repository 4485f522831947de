"""The HTML report: a `kdaudit.report/v1` report rendered as one self-contained page.

Above the engine (distill/) in the layers: it reads a finished `Report` and never trains or
queries anything. `html_page.render_report_html` is the entry point; each section has its
own module (verdict_html, plots, budget_html, tables), on shared helpers (kinds, svg,
html_format).
"""
