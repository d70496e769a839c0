"""``rwmaps`` and ``python -m rwmaps_cli``: the command line, with a head start and a quick end.

A local ``rwmaps compute`` (no ``--scheduler``) costs a fixed 0.3-0.5 s on top of its cases,
and this module takes two pieces of it away:

- the workers' server starts before anything else is imported: it imports what a case
  needs (about 0.3 s) while the command line imports its own, instead of after
  (:mod:`rwmaps_cli.workers`);
- once the command has returned (its files written and closed, its lock released), the
  workers are shut down, the output is flushed, and the process ends without tearing down
  its 500 modules one by one, which takes 0.15-0.2 s.

A wrong guess (``--help``, a usage error) costs nothing but the server, which exits with
the command.  Every other command runs and ends as usual.
"""

import os
import sys


def main() -> None:
    local_compute = sys.argv[1:2] == ["compute"] and not any(arg.startswith("--scheduler") for arg in sys.argv)
    if local_compute:
        from .workers import start_worker_server

        start_worker_server()
    from .cli import main as command_line

    try:
        command_line()
    except SystemExit as exit:
        if not local_compute or not (exit.code is None or isinstance(exit.code, int)):
            raise
        _end(exit.code or 0)


def _end(code: int) -> None:
    from .workers import shutdown

    shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`rwmaps compute ... | head`): nothing left to say
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
