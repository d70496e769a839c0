"""``rwmaps`` and ``python -m rwmaps_cli``: the command line, with a head start and a quick end.

A local ``rwmaps compute`` (no ``--scheduler``) costs a fixed 0.5 s or so on top of its
cases, and this module takes two pieces of what it was away:

- the workers' server starts before anything else is imported: it imports what a case
  needs (about 0.3 s) while the command line imports its own, instead of after
  (:mod:`rwmaps_cli.workers`);
- multiprocessing's resource tracker is started first with its stderr on ``/dev/null``: it
  still cleans up what a stopped run's workers leave, without a warning after rwmaps' last
  line;
- once the command has returned (its files written and closed, its lock released), the
  workers are joined, the exit handlers run (loky's, multiprocessing's: no semaphore is
  left to the resource tracker), the output is flushed, and the process ends without
  tearing down its 500 modules one by one, which takes 0.15-0.2 s.  Not under a profiler,
  a coverage tool or a debugger: they write their results at teardown.

A wrong guess (``--help``, a usage error) costs nothing but the server, which exits with
the command.  Every other command runs and ends as usual.
"""

import atexit
import os
import sys


def main() -> None:
    local_compute = sys.argv[1:2] == ["compute"] and not any(arg.startswith("--scheduler") for arg in sys.argv)
    if local_compute or sys.argv[1:2] == ["verify"]:
        from .workers import start_quiet_resource_tracker, start_worker_server

        start_quiet_resource_tracker()  # before anything that starts one: see its docstring
        if local_compute:
            start_worker_server()
    from .cli import main as command_line

    try:
        command_line()
    except SystemExit as exit:
        traced = sys.gettrace() is not None or sys.getprofile() is not None
        if not local_compute or traced or not (exit.code is None or isinstance(exit.code, int)):
            raise
        _end(exit.code or 0)


def _end(code: int) -> None:
    from .workers import shutdown

    shutdown()
    atexit._run_exitfuncs()  # what the interpreter's exit would run first
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing left to say
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
