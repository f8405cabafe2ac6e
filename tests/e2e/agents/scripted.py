"""An agent for the e2e tests: runs the tool calls named on its command line, one after the
other, and prints one JSON line per tool call (argv, exit status, its output lines).

usage: scripted.py STEP...   where STEP is a JSON list (argv), optionally {"argv": [...], "intent": {...}}
"""

import json
import os
import subprocess
import sys

for raw in sys.argv[1:]:
    step = json.loads(raw)
    argv, intent = (step, None) if isinstance(step, list) else (step["argv"], step.get("intent"))
    env = dict(os.environ)
    if intent:
        env["AGENTD_INTENT"] = json.dumps(intent)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    print(json.dumps({"argv": argv, "pid": None, "rc": proc.returncode, "out": lines, "err": proc.stderr[-500:]}), flush=True)
print(json.dumps({"done": True, "agent_pid": os.getpid()}), flush=True)
