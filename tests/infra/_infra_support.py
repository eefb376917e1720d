"""Helpers for the infra tests: free loopback ports, and ending only the processes a test started."""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack

import psutil


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (held together, so never equal)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def kill_processes_mentioning(marker: str, *, timeout: float = 20.0) -> int:
    """Kill every process whose command line contains ``marker``, with all their descendants.

    Ray's daemons (GCS, raylet, dashboard, monitors) name their session folder on the command
    line, and workers are the raylet's children, so a private ``--temp-dir`` marks exactly one
    cluster's processes: unlike ``ray stop``, this leaves other Ray instances on the machine alone.
    """
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.pid != os.getpid() and any(marker in part for part in process.info["cmdline"] or ()):
                found[process.pid] = process
                found.update({child.pid: child for child in process.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for process in found.values():
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(found.values()), timeout=timeout)
    return len(found)
