"""The memory-fraction launcher: runs the script, says what it capped (no CUDA here)."""
import subprocess
import sys
from pathlib import Path

from agentd.colocation.torch_cap import apply_cap

REPO = str(Path(__file__).resolve().parents[3])


def test_apply_cap_refuses_bad_values_and_says_why():
    assert "not started by agentd" in apply_cap({})
    assert "not within (0, 1]" in apply_cap({"AGENTD_GPU_MEMORY_FRACTION": "1.5"})


def test_the_launcher_runs_the_script_with_its_args(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import sys; print('ran', sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-m", "agentd.colocation.torch_cap", str(script), "--lr", "3"], cwd=REPO,
                       capture_output=True, text=True, env={"PYTHONPATH": REPO, "AGENTD_GPU_MEMORY_FRACTION": "0.25"},
                       timeout=120)
    assert r.returncode == 0 and "ran ['--lr', '3']" in r.stdout
    assert "agentd torch_cap:" in r.stderr and "uncapped" in r.stderr  # no CUDA on this host
