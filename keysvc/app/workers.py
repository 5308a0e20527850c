"""`keysvc serve --workers N`: N ordinary keysvc processes sharing the listen ports.

One Python process serves one core. The parent starts N children, each the
normal single-process server (`keysvc serve` with the same settings and one
worker): each binds the same ports with SO_REUSEPORT (the kernel spreads new
connections across them), keeps its own cache and follows the store's event
log on its own, so nothing is shared and nothing grows with N.

The parent only supervises: SIGTERM or SIGINT is forwarded to every child,
which drains and exits; the parent waits (killing what is left after the
shutdown grace period and a margin) and exits 0 when every child stopped
cleanly.
A child that dies on its own is logged; the parent then stops the others and
exits non-zero, so the supervisor above it (systemd, Kubernetes) restarts the
whole set.

The parent reserves every listen port before the children start (see
`keysvc.app.startup.reserve`): it binds each one exclusively, so a port another
process (another keysvc included) already serves stops the start with one
line, then lets SO_REUSEPORT sockets join its bound, non-listening holder.
Only children (started with `--in-worker-set`) bind with SO_REUSEPORT; a
single `keysvc serve` never does, so nothing else can share its port. Port 0
("any free port") is resolved by that reservation, so every child gets the
same one. Unix sockets cannot be shared this way: `Settings` refuses them
with N > 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from keysvc.app.settings import Settings, env_name
from keysvc.app.startup import check_apart, check_store, reserve

if TYPE_CHECKING:
    import socket

__all__ = ["Supervisor", "child_environment", "run"]

log = structlog.get_logger("keysvc.workers")

_KILL_MARGIN_S = 5.0  # beyond shutdown_grace_s, before SIGKILL
_LISTENERS = ("listen", "admin_listen", "http_listen")  # every address the children bind
# Clean exits once asked to stop: 0, or killed by the signal itself when it came
# before the child had installed its handlers (still starting up).
_STOPPED = (0, -signal.SIGTERM, -signal.SIGINT)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_environment(settings: Settings) -> dict[str, str]:
    """Return KEYSVC_* variables that make a child load exactly `settings`, with one worker."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        env[env_name(f.name)] = text
    env[env_name("workers")] = "1"
    return env


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """Return what a child runs before exec so it gets SIGTERM when the parent dies (Linux).

    A parent killed outright (SIGKILL, the OOM killer) cannot stop its
    children: orphans would keep serving the ports, unsupervised, and the
    restarted set would find them taken. The death signal survives exec; a
    parent already gone by then is caught by the pid check.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return arm


class Supervisor:
    """Starts the workers, forwards signals, and reaps them.

    The signal handlers only record and signal (no logging: a handler may run
    in the middle of a log write); what happened is logged from `wait`.

    Args:
        settings: the resolved settings (`workers` children are started).
        command: how to start one child (default: this interpreter, `-m keysvc serve`).
    """

    def __init__(self, settings: Settings, command: list[str] | None = None) -> None:
        self._settings = settings
        self._command = command or [sys.executable, "-m", "keysvc", "serve", "--in-worker-set"]
        self._children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}  # pid -> (index, process)
        self._stop_reason: int | None = None  # the signal that asked to stop; 0: a worker died
        self._stop_logged = False
        self._killed = False
        self._failed = False

    @property
    def stopping(self) -> bool:
        """True once the workers were asked to stop."""
        return self._stop_reason is not None

    def _signal_all(self, signum: int) -> None:
        # Only wait() reaps, so an unreaped child's pid cannot have been reused.
        for pid, (_, proc) in self._children.items():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def stop(self, reason: int = signal.SIGTERM) -> None:
        """Ask every child to drain and exit; SIGKILL what is left after the grace period."""
        if self._stop_reason is None:
            self._stop_reason = reason
            signal.alarm(max(1, round(self._settings.shutdown_grace_s + _KILL_MARGIN_S)))
        self._signal_all(signal.SIGTERM)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signum)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        self._killed = True
        self._signal_all(signal.SIGKILL)

    def start(self, env: dict[str, str]) -> None:
        """Install the signal handlers, then start the children."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGALRM, self._on_alarm)
        for index in range(self._settings.workers):
            if self.stopping:
                break
            # The parent runs no other thread, and the hook calls only prctl and getppid.
            hook = _die_with_parent(os.getpid())
            proc = subprocess.Popen(self._command, env={**os.environ, **env}, preexec_fn=hook)  # noqa: PLW1509
            self._children[proc.pid] = (index, proc)
            log.info("worker started", worker=index, pid=proc.pid)
        if self.stopping:  # a signal came while starting: reach the late ones too
            self._signal_all(signal.SIGTERM)

    def _log_stop(self) -> None:
        if self._stop_reason and not self._stop_logged:
            self._stop_logged = True
            log.info("workers stopping", signal=signal.Signals(self._stop_reason).name)

    def wait(self) -> int:
        """Reap children until none is left; return the parent's exit code."""
        while any(proc.returncode is None for _, proc in self._children.values()):
            try:
                pid, status = os.wait()  # signal handlers run, then the wait resumes (PEP 475)
            except ChildProcessError:
                break
            self._log_stop()
            if pid not in self._children:
                continue
            index, proc = self._children[pid]
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            if not self.stopping:
                log.error("worker exited unexpectedly: stopping the others", worker=index, pid=pid,
                          exit_code=code)
                self._failed = True
                self.stop(0)
            elif code not in _STOPPED:
                log.warning("worker exited with an error", worker=index, pid=pid, exit_code=code)
                self._failed = True
        signal.alarm(0)
        if self._killed:
            log.error("workers did not stop within the shutdown grace period: killed",
                      grace_s=self._settings.shutdown_grace_s)
            self._failed = True
        return 1 if self._failed else 0


async def _check_store(settings: Settings) -> None:
    from keysvc.app.server import make_store

    store = make_store(settings)
    try:
        await check_store(store, settings)
    finally:
        await store.close()


def run(settings: Settings) -> int:
    """Serve with `settings.workers` processes until SIGTERM/SIGINT; return the exit code.

    Raises:
        ConfigError: a listen address is taken or cannot be bound, a TLS file is
            unusable, or the store can never work (nothing was started).
    """
    from keysvc.app import tls

    tls.from_settings(settings)  # bad TLS files: one line from here, not one per child
    tls.check_store_files(settings.store)
    asyncio.run(_check_store(settings))  # once here, not N times in the children
    holders: list[socket.socket] = []
    resolved: dict[str, Any] = {}
    try:
        for name in _LISTENERS:
            if getattr(settings, name, ""):
                check_apart(name, getattr(settings, name), resolved)
                resolved[name], holder = reserve(name, getattr(settings, name))
                holders += [holder] if holder is not None else []
        settings = dataclasses.replace(settings, **resolved)
        supervisor = Supervisor(settings)
        log.info("keysvc starting workers", workers=settings.workers, pid=os.getpid(), **resolved)
        started = time.monotonic()
        supervisor.start(child_environment(settings))
        code = supervisor.wait()
        log.info("keysvc workers stopped", exit_code=code, uptime_s=round(time.monotonic() - started, 1))
        return code
    finally:
        for holder in holders:
            holder.close()
