"""A local Ray instance on 127.0.0.1 for the tests, in its own process (so that stopping it
stops only this instance): ``with RayCluster() as address: ...``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SERVE = """
import sys, time, ray
ctx = ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
               log_to_driver=False)
print(ctx.address_info["gcs_address"], flush=True)
while True:
    time.sleep(1)
"""


class RayCluster:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def __enter__(self) -> str:
        # token authentication off for this loopback test instance (the drivers in the tests
        # connect without a token); no other network is reachable from the test machines
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and not line:
            line = self.proc.stdout.readline().strip()
            if self.proc.poll() is not None:
                break
        if not line:
            self.__exit__()
            raise RuntimeError("the local Ray instance did not start")
        self.address = line
        return line

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        # SIGTERM: ray.init's exit handler stops the raylet and GCS it started
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
