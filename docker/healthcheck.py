"""Container health probe for the greenchannel image (run by the Dockerfile's HEALTHCHECK).

Why this probe: with GC_WEB_ENABLED (the image default) the Faust worker serves HTTP on
GC_WEB_PORT from the same asyncio event loop that runs the agents, and Faust's production
index view answers `GET /` with 200 {"status": "OK"}. A 200 within the timeout therefore
shows the worker process is up *and* its event loop is not wedged, at the cost of one
loopback request: no broker or database round trip, no new JVM or Kafka client, so it is
cheap enough to run every few seconds on every replica. A bare TCP connect would not do:
the kernel completes the handshake from the listen backlog even when the loop is stuck.

With GC_WEB_ENABLED off there is no endpoint to ask, so the probe falls back to checking
that a greenchannel process exists and is neither stopped nor a zombie. That is a weak
check (when the process dies the container ends anyway); enable the web port for a real one.

Standard library only, so it runs with the image's interpreter and nothing else.
Exit status: 0 healthy, 1 unhealthy (what Docker's HEALTHCHECK expects).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

# The spellings pydantic accepts as true for a bool setting such as GC_WEB_ENABLED.
_TRUE = {"1", "true", "t", "yes", "y", "on"}
DEFAULT_PORT = 6066  # streams.settings.Settings.web_port
DEFAULT_TIMEOUT = 3.0


def web_enabled(environ: Mapping[str, str]) -> bool:
    return environ.get("GC_WEB_ENABLED", "").strip().lower() in _TRUE


def probe_web(port: int, timeout: float) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{port}/"
    # No proxies: an HTTP(S)_PROXY in the container's environment must not reroute loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered HTTP {exc.code}"
    except OSError as exc:  # refused, timed out, reset, ...
        return False, f"{url} unreachable: {exc}"
    return status == 200, f"{url} answered HTTP {status}"


def _is_greenchannel(cmdline: bytes) -> bool:
    # The console script runs as "/opt/venv/bin/python /opt/venv/bin/greenchannel worker"
    # (argv[0] is the interpreter, argv[1] the script). Under an init (compose `init: true`)
    # it is a child of PID 1, whose own argv ("docker-init -- greenchannel ...") must not count.
    argv = [arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg]
    return any(Path(arg).name == "greenchannel" for arg in argv[:2])


def probe_process(proc: Path) -> tuple[bool, str]:
    states = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            if not _is_greenchannel((entry / "cmdline").read_bytes()):
                continue
            stat = (entry / "stat").read_text()
        except OSError:  # the process went away while we looked
            continue
        # /proc/PID/stat is "pid (comm) state ..."; comm may hold spaces, so split after ')'.
        states.append(stat.rpartition(")")[2].split()[0] if ")" in stat else "?")
    alive = [s for s in states if s not in {"Z", "X", "x", "T", "t"}]
    if alive:
        return True, f"greenchannel process running, state {alive[0]} (web port disabled: weak check)"
    if states:
        return False, f"greenchannel process in state {states[0]}"
    return False, "no greenchannel process"


def main(environ: Mapping[str, str] | None = None, proc: Path = Path("/proc")) -> int:
    environ = os.environ if environ is None else environ
    if web_enabled(environ):
        port = int(environ.get("GC_WEB_PORT") or DEFAULT_PORT)
        timeout = float(environ.get("GC_HEALTHCHECK_TIMEOUT") or DEFAULT_TIMEOUT)
        healthy, detail = probe_web(port, timeout)
    else:
        healthy, detail = probe_process(proc)
    print(("healthy: " if healthy else "unhealthy: ") + detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
