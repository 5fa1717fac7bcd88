"""The proxy bench runs end to end: every configuration and workload gives a row with real traffic.

A `--quick` run of the real command line (upstream, receiver, plain mitmdump and the gateway
as subprocesses). No timing is asserted: only that every row measured something, that the
gateway really inferred and delivered events under the websocket load, and that it dropped none.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_quick_bench_gives_every_row(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.proxy", "--quick", "--json", str(out),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    rows = {(r["workload"], r["config"]): r for r in result["rows"]}
    assert set(rows) == {(w, c) for w in ("rest", "ws-mixed", "ws-paced", "ws-worst")
                         for c in ("direct", "mitmdump", "gateway")}
    for key, r in rows.items():
        assert r["count"] > 0 and r["per_s"] > 0, key
        assert r["p99_ms"] >= r["p50_ms"] > 0, key
        assert r["errors"] == 0, key
        assert r["vs_mitmdump"] > 0 and r["vs_direct"] > 0, key
    assert rows[("rest", "mitmdump")]["vs_mitmdump"] == 1.0
    # the gateway did its real job under load: events inferred and delivered, nothing dropped
    work = result["gateway_work"]
    assert work["gateway ws-worst"]["events"] > 0
    assert work["gateway ws-worst"]["delivered"] == work["gateway ws-worst"]["deliveries_routed"] > 0
    assert work["gateway ws-mixed"]["events"] > 0
    assert all(w["observations_dropped"] == 0 and w["stage_errors"] == 0 for w in work.values())
    # the markdown table went to stdout
    assert set(result["idle_cpu_pct"]) == {"mitmdump", "gateway"}
    assert "| ws-worst | gateway |" in proc.stdout and "vs mitmdump" in proc.stdout


def test_help_describes_the_options():
    proc = subprocess.run([sys.executable, "-m", "bench.proxy", "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0
    for option in ("--seconds", "--rounds", "--quick", "--profile", "--ws-rate", "--configs"):
        assert option in proc.stdout
