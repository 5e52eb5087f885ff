"""Test-only batch runner for the guard test: runs many CLI invocations in one process (the same
``loramgr.cli.main`` as the console script), each under an alarm, and prints one JSON line per case:
``{"case": i, "exit": code, "stderr": ...}``; a case that outlives its alarm is reported as a hang.

    python tests/guard_runner.py CASES.json SECONDS
"""

import contextlib
import io
import json
import signal
import sys


class Hang(BaseException):  # not an Exception: the CLI must not translate it
    pass


def _alarm(signum, frame):  # type: ignore[no-untyped-def]
    raise Hang()


def main() -> None:
    from loramgr.cli import main as cli

    cases = json.load(open(sys.argv[1]))
    limit = int(sys.argv[2])
    signal.signal(signal.SIGALRM, _alarm)
    for i, args in enumerate(cases):
        out, err = io.StringIO(), io.StringIO()
        code: object = 0
        signal.alarm(limit)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    cli(args)
                except SystemExit as e:
                    code = e.code
        except Hang:
            code = "hang"
        finally:
            signal.alarm(0)
        print(json.dumps({"case": i, "exit": code, "stderr": err.getvalue()[-2000:]}), flush=True)


if __name__ == "__main__":
    main()
