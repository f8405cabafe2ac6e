"""An agent that declares intent over the API before its tool calls (the Python client),
then reports what the daemon answered, including refusals.

usage: intent_agent.py
"""

import json
import subprocess

from agentd.api.client import ApiClient, ApiClientError, declare_intent

client = ApiClient()
granted = declare_intent(tool="bigjob", memory="200M", duration_s=5)
out = {"granted": granted}
subprocess.run(["sleep", "0.3"])
try:
    client.declare_intent({"memory": -5})
except ApiClientError as exc:
    out["refused"] = {"status": exc.status, "code": exc.code, "field": exc.field}
out["clipped"] = client.declare_intent({"memory": "900G", "cpu": 64})
print(json.dumps(out), flush=True)
