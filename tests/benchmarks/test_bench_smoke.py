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
