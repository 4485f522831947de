"""A tiny CPU run of benchmarks/bench_datafree.py (the CIFAR-10 data-free row's command), ~40 s on one thread.

One torch thread: on 2 shared cores the same run took over 400 s with two.
"""

import json
import subprocess
import sys

from tests.helpers.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_bench_datafree_tiny(tmp_path):
    out, results = tmp_path / "bench.json", tmp_path / "RESULTS.md"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_datafree.py"), "--preset", "tiny", "--device", "cpu", "--threads", "1",
         "--out", str(tmp_path / "run"), "--json", str(out), "--results", str(results)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [(r["attack"], r["access"]) for r in res["rows"][:4]] == [
        ("datafree_dfad", "grey_box"), ("datafree_dfad_skeptical", "grey_box"),
        ("datafree_dfme", "black_box"), ("datafree_dfme_skeptical", "black_box")]
    assert len(res["rows"]) == 8 and all(r["queries"] > 0 for r in res["rows"])
    assert "| nasty cnn-8-16-16-32" in results.read_text()
