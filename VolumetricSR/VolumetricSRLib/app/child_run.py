"""Run a `volumetricsr` command in a child process and follow its events; kill its whole tree.

Imports neither torch nor anything of Slicer, so that Slicer's GUI process can use it. The child
writes one event per line on stdout (`volumetricsr ... --progress json`; `events` defines them and
parses them into dataclasses). Lines that are not events and stderr are kept as a log, and each
stderr line goes to a `logging` logger as it comes (in Slicer: the application log), so that
tracebacks and warnings reach a bug report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from .events import Event, Failed, parse

CORE_PARENT = Path(__file__).resolve().parents[2]
"""The folder that holds VolumetricSRLib: the child finds the core through it."""

KILL_WAIT_SECONDS = 1.0
LOG_LINES = 200
DETAIL_LINES = 30


class ChildError(RuntimeError):
    """The child process failed; the message is the child's own one-line reason, `details` its last
    lines of output (for an error dialog's details)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def slicer_python() -> str | None:
    """Slicer's own Python (`PythonSlicer`, on PATH inside Slicer and beside its executable), or None."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(sys.executable).with_name("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    return str(beside) if beside.exists() else None


def core_command(python: str, arguments: Sequence[str]) -> list[str]:
    """The command line that runs `volumetricsr ARGUMENTS` with `python`."""
    return [python, "-m", "VolumetricSRLib.app.cli", *[str(argument) for argument in arguments]]


class ChildRun:
    """One child process; `poll()` returns the JSON events received since the last call.

    Reader threads fill a queue; `poll()`, `finished` and `kill()` are meant for one thread (in
    Slicer, the main thread, from a timer).
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        """Start `command`; `log` receives every stderr line (errors as errors, warnings as warnings)."""
        self._logger = log
        environment = dict(os.environ if env is None else env)
        path = environment.get("PYTHONPATH", "")
        environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(CORE_PARENT), path) if p)
        environment.setdefault("PYTHONUNBUFFERED", "1")
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self._events: queue.Queue[Event] = queue.Queue()
        self._process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=environment,
            **_own_process_group(),
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self._process.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self._process.stderr, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def finished(self) -> bool:
        """True once the child has exited and all it wrote has been read."""
        return self._process.poll() is not None and not any(r.is_alive() for r in self._readers)

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    def poll(self) -> list[Event]:
        """The events received since the last call, oldest first; never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and its output to be read; its exit code."""
        code = self._process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        """Kill the child and every process it started; returns once they are gone (about 1 s at most)."""
        if self._process.poll() is None:
            if os.name == "nt":  # the whole tree, without a console window flashing up
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(self._process.pid)],
                    capture_output=True,
                    check=False,
                    creationflags=subprocess.CREATE_NO_WINDOW,
                )
            else:
                with contextlib.suppress(ProcessLookupError):  # already gone
                    os.killpg(self._process.pid, signal.SIGKILL)
        try:
            self._process.wait(KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(KILL_WAIT_SECONDS)
        if os.name != "nt":  # its own children got the signal too, but may still be exiting on a busy CPU
            deadline = time.monotonic() + KILL_WAIT_SECONDS
            while group_running(self._process.pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        for reader in self._readers:
            reader.join(KILL_WAIT_SECONDS)

    def failure(self) -> str:
        """One line that says why the child failed: its error event, else its last words."""
        for line in reversed(self.log):
            if line.startswith("error: "):
                return line[len("error: ") :]
        last = next((line for line in reversed(self.log) if line.strip()), "")
        return last or f"the super-resolution process stopped with exit code {self.returncode}"

    def last_lines(self, count: int = DETAIL_LINES) -> str:
        """The child's last `count` lines of text output (stderr and non-JSON stdout)."""
        return "\n".join(list(self.log)[-count:])

    def _read(self, stream, from_stdout: bool) -> None:
        for line in stream:
            line = line.rstrip("\r\n")
            event = parse(line) if from_stdout else None
            if not from_stdout and self._logger is not None and line.strip():
                _log_line(self._logger, line)
            if event is None:
                self.log.append(line)
            else:
                if isinstance(event, Failed):
                    self.log.append(f"error: {event.message}")
                self._events.put(event)
        stream.close()


def _log_line(logger: logging.Logger, line: str) -> None:
    """One stderr line of the child at the level its prefix says."""
    if line.startswith("error: ") or line.startswith("Traceback"):
        logger.error(f"child: {line}")
    elif line.startswith("warning: "):
        logger.warning(f"child: {line}")
    else:
        logger.info(f"child: {line}")


def _own_process_group() -> dict:
    """Popen options that give the child its own process group, so that its whole tree can be killed."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def group_running(group: int, proc: Path = Path("/proc")) -> bool:
    """Whether a process of process group `group` is still running; processes that have exited and only
    wait to be reaped (zombies) do not count. Without /proc: whether the group can still be signalled."""
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists
            return True
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _parent, process_group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if state != "Z" and int(process_group) == group:
            return True
    return False
