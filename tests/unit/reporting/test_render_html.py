"""The HTML report: rendered from real engine output (a tiny audit of a random teacher),
checked for the verdict sentence, the tables with per-seed values, Δacc/Δbase, the inline SVG
plots and self-containment; the `kdaudit render` / `kdaudit report --html` commands; and
the web routes (`/`, `/v1/audits/{id}/report.html`) through the app factory."""

from __future__ import annotations

import json
import re
import uuid
from html.parser import HTMLParser

import pytest

from kdaudit.distill.report import AccuracyStats, AttackResult, Report  # noqa: E402
from kdaudit.reporting.html_page import render_report_html  # noqa: E402
from kdaudit.reporting.kinds import KIND_COLOURS, kind_label  # noqa: E402
from kdaudit.reporting.verdict_html import verdict_sentence  # noqa: E402
from tests.helpers import service as h  # noqa: E402

STUDENT = "cnn-4-8-8-16"


@pytest.fixture(scope="module")
def report() -> Report:
    """A real report: run_audit on a briefly trained cnn-8-8-8-16 teacher (a random one is refused by the
    sanity gate and would only ever get 'at chance' verdicts), 2 seeds x 2 epochs (a third of digits)."""
    from kdaudit.distill.config import AuditConfig, TrainSchedule
    from kdaudit.distill.data import load_splits
    from kdaudit.distill.runner import run_audit
    from kdaudit.distill.train import Cohort, Member

    teacher = Cohort([Member("teacher", "scratch", "cnn-8-8-8-16", 0)], load_splits("digits"),
                     TrainSchedule(epochs=3, batch_size=32, lr=0.05, augment=False)).train()[0].model
    config = AuditConfig(
        teacher_arch="cnn-8-8-8-16", students=[STUDENT], seeds=2, schedule={"epochs": 2}, fraction=0.3, device="cpu"
    )
    return run_audit(config, teacher, "0" * 64)


@pytest.fixture(scope="module")
def page(report) -> str:
    return render_report_html(report, audit_id="a1b2c3")


class _Balance(HTMLParser):
    VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id" and v]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id" and v]

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            if tag in self.stack:
                while self.stack and self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()


def _row(page: str, kind: str) -> str:
    m = re.search(rf'<tr[^>]*data-kind="{kind}"[^>]*>(.*?)</tr>', page, re.S)
    assert m, f"no table row for {kind}"
    return m.group(1)


def _text(fragment: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment)).strip()


def test_verdict_is_one_sentence_with_the_numbers(report, page):
    s = report.summary
    sentence = verdict_sentence(report)
    assert sentence == s.headline  # the owner's sentence: the same in the JSON, the CLI and this page
    assert {"leaks": "LEAKS", "resists": "RESISTS", "inconclusive": "INCONCLUSIVE"}[s.verdict] in sentence
    assert s.protection is not None and ("PROTECTION" in sentence.upper())
    assert sentence.endswith(".") and sentence.count(". ") == 0  # one sentence
    assert 'id="comparisons"' in page and "95% Welch" in page and f'data-protection="{s.protection}"' in page
    m = re.search(r'<p class="verdict (\w+)" id="verdict" data-verdict="(\w+)">(.*?)</p>', page, re.S)
    assert m and m.group(1) == m.group(2) == s.verdict
    assert _text(m.group(3)).endswith(_text(sentence.replace("&", "&amp;")))


def test_teacher_and_threat_model(report, page):
    assert report.teacher.sha256 in page and f"{report.teacher.accuracy:.2f}%" in page
    assert "Threat model" in page and f"{report.dataset.train_size:,} labelled images" in page
    assert "τ = 4.0" in page and "30%" in page


def test_table_per_student_with_mean_std_per_seed_and_deltas(report, page):
    assert page.count('<section class="student"') == len(report.scratch) == 1
    assert f'id="t-{STUDENT}"' in page
    sc = report.scratch[0].accuracy
    row = _text(_row(page, "scratch"))
    assert f"{sc.mean:.2f} ± {sc.std:.2f}" in row
    assert all(f"{v:.2f}" in row for v in sc.runs) and len(sc.runs) == 2
    assert "seed 0" in page and "seed 1" in page
    kinds = {a.attack for a in report.attacks}
    assert kinds == {"normal_kd", "skeptical", "skeptical_e"}
    for a in report.attacks:
        row = _text(_row(page, a.attack))
        assert f"{a.accuracy.mean:.2f} ± {a.accuracy.std:.2f}" in row, row
        assert all(f"{v:.2f}" in row for v in a.accuracy.runs), row
        assert f"{a.delta_base:+.2f} pts" in row, row
        assert f"{a.teacher_queries:,}" in row
    dacc = report.summary.students[0].delta_acc
    assert dacc is not None and f"Δacc (best skeptical variant − normal KD) for this student: {dacc:+.2f} pts" in _text(page)
    best = _row(page, report.summary.best_attack)
    assert "best attack" in best
    # the exits of the skeptical student, per run
    assert "exit1" in page and "ensemble" in page


def test_plots_are_inline_svg_with_labelled_axes_and_consistent_colours(report, page):
    svgs = re.findall(r"<svg\b.*?</svg>", page, re.S)
    assert len(svgs) == 3 and page.count("<svg") == 3
    acc, curves, budget = svgs  # the KD runs' leakage-vs-queries curves are the third
    assert "Test accuracy (%)" in acc and "Validation accuracy (%)" in curves and "Epoch" in curves
    assert "Teacher queries" in budget and 'id="h-budget"' in page
    for kind in ("scratch", "normal_kd", "skeptical", "skeptical_e"):
        colour = KIND_COLOURS[kind]
        assert colour in acc, kind  # bar
        assert f"background:{colour}" in _row(page, kind)  # table swatch
        assert kind_label(kind) in acc
    for kind in ("scratch", "normal_kd", "skeptical"):  # runs trained per kind
        assert KIND_COLOURS[kind] in curves
    assert "seed 0" in curves and "seed 1" in curves
    assert 'role="img"' in acc and 'aria-label="' in curves


def test_self_contained_and_well_formed(page):
    assert not re.search(r"https?://", page), re.findall(r".{40}https?://.{40}", page)[:3]
    assert "<script" not in page and "<img" not in page and "<link" not in page and "@import" not in page
    assert "url(" not in page.replace("url(#", "")  # only in-document references
    parser = _Balance()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert len(parser.ids) == len(set(parser.ids)), "duplicate ids across the inline SVGs"
    assert page.startswith("<!DOCTYPE html>") and '<html lang="en">' in page
    assert '<meta name="viewport"' in page


def _variant(report: Report, verdict: str, delta: float) -> Report:
    attacks = [a.model_copy(update={"delta_base": delta}) if a.attack == "skeptical" else a for a in report.attacks]
    summary = report.summary.model_copy(update={"verdict": verdict, "best_attack": "skeptical", "best_student": STUDENT,
                                                "headline": None})  # a report from before headlines: the older sentence
    return report.model_copy(update={"attacks": attacks, "summary": summary})


def test_leaks_and_resists_sentences(report):
    leaks = verdict_sentence(_variant(report, "leaks", 12.5))
    assert leaks.startswith("The teacher LEAKS") and "12.50 pts above" in leaks and "noise margin" in leaks
    resists = verdict_sentence(_variant(report, "resists", -30.0))
    assert resists.startswith("The teacher RESISTS") and "-30.00 pts" in resists


def test_more_students_and_a_data_free_attack(report):
    """Tables per student, data-free and unknown attacks get a row and a colour of their own."""
    other = "cnn-8-8-8-16"
    stats = AccuracyStats.of([50.0, 52.0])
    extra = [
        AttackResult(attack="data_free", student=STUDENT, accuracy=stats, delta_base=-40.0, teacher_queries=10, seconds=1.0),
        AttackResult(attack="zeroth_order", student=STUDENT, accuracy=stats, delta_base=-40.0, teacher_queries=10, seconds=1.0),
        AttackResult(attack="normal_kd", student=other, accuracy=stats, delta_base=1.0, teacher_queries=10, seconds=1.0),
    ]
    scratch = [*report.scratch, report.scratch[0].model_copy(update={"student": other})]
    r = report.model_copy(update={"attacks": [*report.attacks, *extra], "scratch": scratch})
    html = render_report_html(r)
    assert html.count('<section class="student"') == 2 and f'id="t-{other}"' in html
    assert "data-free KD" in html and KIND_COLOURS["data_free"] in html and 'data-kind="zeroth_order"' in html
    assert "n/a" in html  # Δacc of the student without a skeptical run
    assert html.count("<svg") == 3 and not re.search(r"https?://", html)


def test_report_without_curves_still_renders(report):
    html = render_report_html(report.model_copy(update={"runs": []}).model_dump(mode="json", by_alias=True))
    assert html.count("<svg") == 1 and "no per-epoch validation curves" in html


# ---------------------------------------------------------------- commands


def test_render_command(report, tmp_path, capsys):
    from kdaudit.cli import main

    src = tmp_path / "report.json"
    src.write_text(report.to_json())
    assert main(["render", str(src), "-o", str(tmp_path / "out.html")]) == 0
    html = (tmp_path / "out.html").read_text()
    assert html.count("<svg") == 3 and report.summary.verdict.upper() in html
    assert "report page written to" in capsys.readouterr().err
    assert main(["render", str(src)]) == 0 and (tmp_path / "report.html").is_file()  # default name
    capsys.readouterr()

    (tmp_path / "bad.json").write_text("{not json")
    assert main(["render", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something else"}))
    assert main(["render", str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("kdaudit: ") for line in err) and "not a kdaudit.report/v1" in err[1]
    assert main(["render", str(tmp_path / "missing.json")]) == 2


def test_render_is_registered_with_the_main_cli_if_wired():
    from kdaudit import cli

    parser = cli.build_parser()
    try:
        args = parser.parse_args(["render", "r.json", "-o", "x.html"])
    except SystemExit:
        pytest.skip("`render` is not wired into kdaudit.cli yet (add render_command.register(sub) to build_parser)")
    assert args.out == "x.html"


def test_report_command_html_option(report, tmp_path, monkeypatch, capsys):
    from kdaudit import client_commands
    from kdaudit.service.client import Client

    monkeypatch.setattr(Client, "report", lambda self, audit_id: json.loads(report.to_json()))
    parser = __import__("argparse").ArgumentParser()
    client_commands.register(parser.add_subparsers())
    out = tmp_path / "r.html"
    args = parser.parse_args(["report", "abc", "--api-key", "k", "--html", str(out)])
    assert args.func(args) == 0
    assert out.read_text().count("<svg") == 3 and "audit <code>abc</code>" in out.read_text()
    captured = capsys.readouterr()
    assert captured.out == "" and "report page written to" in captured.err
    args = parser.parse_args(["report", "abc", "--api-key", "k", "--html", str(out), "-o", str(tmp_path / "r.json")])
    assert args.func(args) == 0 and json.loads((tmp_path / "r.json").read_text())["schema"] == "kdaudit.report/v1"


# ---------------------------------------------------------------- web routes


@pytest.fixture(scope="module")
def web(tmp_path_factory, report):
    from fastapi.testclient import TestClient

    from kdaudit.service import web as web_mod
    from kdaudit.service.app import create_app
    from kdaudit.store import repo
    from kdaudit.store.db import session_factory
    from kdaudit.store.settings import ServiceSettings

    root = tmp_path_factory.mktemp("web")
    settings = ServiceSettings(
        data_dir=root / "data", database_url=None, broker_url=None, storage_dir=None, auto_migrate=True,
        queue=f"kdaudit-test-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    app = create_app(settings)
    if not any(getattr(r, "path", None) == "/v1/audits/{audit_id}/report.html" for r in app.routes):
        app.include_router(web_mod.router)
    with TestClient(app, raise_server_exceptions=False) as client:
        key, other = h.new_key(settings, "web"), h.new_key(settings, "other")
        with session_factory(settings.resolved_database_url)() as s:
            tenant = repo.tenant_for_key(s, key)
            teacher = repo.add_teacher(
                s, tenant.id, sha256="0" * 64, filename="t.safetensors", architecture="cnn-8-8-8-16", dataset="digits",
                num_classes=10, in_channels=1, format="safetensors", parameters=1, size_bytes=1,
            )  # fmt: skip
            audits = []
            for _ in range(2):
                a, _ = repo.create_audit(
                    s, tenant_id=tenant.id, teacher_id=teacher.id, config=report.config, runs_total=6, epochs=2,
                    request_hash=uuid.uuid4().hex,
                )  # fmt: skip
                audits.append(a.id)
        yield {"client": client, "settings": settings, "key": key, "other": other, "queued": audits[0], "done": audits[1]}


def _succeed(web, audit_id: str, body: dict) -> None:
    from kdaudit.store import repo
    from kdaudit.store.db import session_factory

    with session_factory(web["settings"].resolved_database_url)() as s:
        repo.claim_audit(s, audit_id, "test-worker", 60)
        assert repo.store_report(s, audit_id, "test-worker", body)


def test_report_html_route(web, report):
    c, key = web["client"], web["key"]
    url = f"/v1/audits/{web['done']}/report.html"
    r = c.get(url)
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    r = c.get(url, headers=h.auth(key))
    assert r.status_code == 409 and "no report yet" in r.json()["detail"] and r.headers.get("retry-after")
    _succeed(web, web["done"], json.loads(report.to_json()))
    r = c.get(url, headers=h.auth(key))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.text.count("<svg") == 3 and f'data-verdict="{report.summary.verdict}"' in r.text
    assert web["done"] in r.text
    assert c.get(url, headers=h.auth(key)).text == r.text  # cached render, same bytes
    assert c.get(url, headers=h.auth(web["other"])).status_code == 404  # another tenant's audit
    assert c.get("/v1/audits/nope!/report.html", headers=h.auth(key)).status_code == 422
    assert "/v1/audits/{audit_id}/report.html" in c.get("/openapi.json").json()["paths"]


def test_ui_pages_and_static_files(web):
    c = web["client"]
    r = c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert not re.search(r"(src|href)=\"https?://", html)  # no external assets
    for tag in ("<main", "<header", "<nav", "<section", "<form", "<label"):
        assert tag in html
    # every form control has a label: <label for=id>, or is wrapped in one
    ids = re.findall(r'<(?:input|select)\b[^>]*\bid="([^"]+)"', html)
    assert {"api-key", "teacher-file", "teacher-arch", "teacher-dataset", "audit-teacher", "audit-seeds", "audit-epochs"} <= set(ids)
    for i in ids:
        assert f'<label for="{i}"' in html, i
    unlabelled = [m for m in re.findall(r"<(?:input|select)\b[^>]*>", html) if "id=" not in m]
    assert all('type="checkbox"' in m for m in unlabelled)
    assert html.count('<label class="check"><input type="checkbox"') == len(unlabelled)
    for name, media in (("app.js", "javascript"), ("app.css", "text/css")):
        r = c.get(f"/static/{name}")
        assert r.status_code == 200 and media in r.headers["content-type"]
        assert not re.search(r"(import|url)\(?\s*['\"]?https?://", r.text)
    assert c.get("/static/nope.js").status_code == 404
    assert c.get("/static/..%2Fweb.py").status_code == 404
    r = c.get(f"/audits/{web['queued']}/report")
    assert r.status_code == 200 and f'data-audit-id="{web["queued"]}"' in r.text and "<iframe" in r.text
