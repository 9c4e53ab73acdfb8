"""Running ``pracset`` commands from the tests: in a real process, or in a forked child of one warm process.

* :func:`command_env` is the environment every such process gets: the developer's ``$PRACSET_DATA_DIR`` and
  ``$PRACSET_CACHE_DIR`` left out, one thread (``OMP_NUM_THREADS=1``).
* :func:`pracset` runs ``python -m pracset ARGV`` in a new interpreter.
* :class:`ForkRunner` runs many commands cheaply: one helper process imports pracset once, then forks a child
  per command that runs ``python -m pracset ARGV`` (runpy, exactly as the interpreter does: an uncaught
  exception prints its traceback and exits 1) with its own cwd, environment, stdout and stderr files, so each
  costs a fork, not an interpreter start. A child is killed by ``alarm`` after its timeout (a hang fails the
  test instead of hanging the suite); its address space can be capped (``headroom``) so that an allocation of
  what a hostile file claims fails there, not on the machine; and it can run a Python snippet instead of a
  command line. ``tests/test_bad_inputs.py::test_runner_matches_a_real_process`` checks that it answers as
  ``python -m pracset`` does. The ``cli`` fixture in ``conftest.py`` holds one per test module.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path

#: A sentinel: "the runner's default" (``None`` is a value: no address-space cap).
DEFAULT = object()


def command_env(*, unbuffered: bool = False) -> dict:
    """This process's environment for a pracset command: no ``$PRACSET_DATA_DIR`` or ``$PRACSET_CACHE_DIR`` of
    the developer's, ``OMP_NUM_THREADS=1``, and ``PYTHONUNBUFFERED=1`` when ``unbuffered``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRACSET_DATA_DIR", "PRACSET_CACHE_DIR")}
    env["OMP_NUM_THREADS"] = "1"
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def pracset(argv: list[str], cwd: Path, *, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m pracset ARGV`` in ``cwd``, in a new process (:func:`command_env`); its output captured."""
    return subprocess.run([sys.executable, "-m", "pracset", *argv], cwd=cwd, env=command_env(), capture_output=True,
                          text=True, timeout=timeout)


# The helper process: reads one JSON job a line, forks a child for it, answers {"rc": exit code}.
_SERVER = r"""
import json, os, resource, runpy, signal, sys, traceback
import pracset.cli, pracset.build, pracset.tickets, pracset.pipeline, pracset.manifest.schema  # warm imports
import pracset.data.readers, pracset.data.sources, pracset.sparse.mask, pracset.tickets.context, pracset.train.loop
import sklearn.datasets, datasets, pyarrow.parquet  # digits, hf
from pracset.errors import PracsetError
def address_space():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("VmSize:"))
for line in sys.stdin:
    job = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(job["cwd"])
            os.environ.update(job["env"])
            for fd, name in ((1, job["stdout"]), (2, job["stderr"])):
                target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            signal.alarm(job["timeout"])  # a hang (a FIFO opened) is killed: the test fails, it never hangs
            if job["headroom"]:
                hard = resource.getrlimit(resource.RLIMIT_AS)[1]
                resource.setrlimit(resource.RLIMIT_AS, (address_space() + job["headroom"], hard))
            if job["code"] is not None:  # a Python snippet: a PracsetError is one line and exit code 2
                try:
                    exec(compile(job["code"], "<case>", "exec"), {})
                    code = 0
                except PracsetError as exc:
                    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
                    code = 2
                except BaseException:
                    traceback.print_exc()
                    code = 1
            else:
                sys.argv = ["pracset", *job["argv"]]
                try:
                    runpy.run_module("pracset", run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exc:  # as the interpreter does: a non-integer code is printed, exit 1
                    if exc.code is None or isinstance(exc.code, int):
                        code = exc.code or 0
                    else:
                        print(exc.code, file=sys.stderr)
                        code = 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class ForkRunner:
    """Commands (or Python snippets) in forked children of one warm process; see the module docstring.

    ``timeout`` (seconds) and ``headroom`` (bytes of address space a child may add to what the warm process
    had; ``None``: no cap) are the defaults of every call; each call can override them.
    """

    def __init__(self, streams: Path, *, timeout: int = 60, headroom: int | None = None):
        self.streams = streams  # where the children's stdout and stderr go
        self.timeout, self.headroom, self.count = timeout, headroom, 0
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=command_env(unbuffered=True), cwd=Path(__file__).parent)

    def run(self, argv: list, cwd: Path, *, timeout: int | None = None, env: dict | None = None,
            headroom=DEFAULT) -> tuple[int, str, str]:
        """``python -m pracset ARGV`` in ``cwd`` (``env`` added to the environment): (exit code, stdout, stderr)."""
        return self._run({"argv": [str(a) for a in argv], "code": None}, cwd, timeout, env, headroom)

    def python(self, code: str, cwd: Path, *, timeout: int | None = None, env: dict | None = None,
               headroom=DEFAULT) -> tuple[int, str, str]:
        """Run ``code``; a PracsetError is ``TYPE: MESSAGE`` on stderr and exit code 2."""
        return self._run({"code": textwrap.dedent(code)}, cwd, timeout, env, headroom)

    def _run(self, job: dict, cwd: Path, timeout: int | None, env: dict | None, headroom) -> tuple[int, str, str]:
        self.count += 1
        timeout = self.timeout if timeout is None else timeout
        out, err = self.streams / f"{self.count}.stdout", self.streams / f"{self.count}.stderr"
        job.update(cwd=str(cwd), stdout=str(out), stderr=str(err), timeout=timeout, env=env or {},
                   headroom=self.headroom if headroom is DEFAULT else headroom)
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout + 60)
        assert ready, "the runner process did not answer"
        reply = self.proc.stdout.readline()
        assert reply, "the runner process died"
        return json.loads(reply)["rc"], out.read_text(), err.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
