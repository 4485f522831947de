"""A tiny run of benchmarks/bench_audit.py: the script works and prints both figures.

Speed is measured by the script itself, not asserted here (a timed test on a shared CI
machine would be noise); the figures live in benchmarks/RESULTS.md.
"""

import json
import subprocess
import sys

from tests.helpers.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_bench_audit_smoke(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_audit.py"), "--preset", "cpu", "--epochs", "1", "--seeds", "1",
         "--device", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "speed-up (naive / cohort wall time)" in p.stdout
    res = json.loads(out.read_text())
    assert res["naive"]["images_per_s"] > 0 and res["cohort"]["images_per_s"] > 0
    # both paths trained the same amount: 6 runs x 1 epoch x (1080 // 32) * 32 images
    for path in ("naive", "cohort"):
        images = res[path]["wall_s"] * res[path]["images_per_s"]
        assert abs(images - 6 * (1080 // 32) * 32) / images < 0.02, (path, images)


def test_load_status_smoke(tmp_path):
    """benchmarks/load_status.py against a live uvicorn (embedded store): every poll answered, the
    figures it records present. Two audits, two worker processes: the options RESULTS.md uses."""
    out = tmp_path / "load.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "load_status.py"), "--sqlite", "--clients", "8", "--seconds", "1",
         "--audits", "2", "--workers", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["errors"] == 0 and res["requests_ok"] > 0 and res["audits_polled"] == 2, res
    assert res["server"].startswith("uvicorn, 2 processes") and res["latency_ms"]["p99"] > 0


def test_the_readme_data_free_table_is_rendered_from_the_recorded_runs(tmp_path):
    """benchmarks/datafree_table.py render over benchmarks/data/datafree_digits.jsonl (the 32 recorded runs)
    prints exactly the README's data-free tables and draws the budget-curve image."""
    svg = tmp_path / "curve.svg"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "datafree_table.py"), "render",
                        str(ROOT / "benchmarks" / "data" / "datafree_digits.jsonl"), "--svg", str(svg)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    readme = (ROOT / "README.md").read_text()
    assert len(rows) >= 20 and all(row in readme for row in rows), [r for r in rows if r not in readme][:3]
    assert svg.read_text().count("<svg") == 1 and "nasty teacher" in svg.read_text()
