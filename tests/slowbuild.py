"""Test-only launcher: the loramgr CLI with every ort section job slowed down, so kill -9 and
concurrent-build tests can catch a build mid-way. Production code carries no such hook.

    python tests/slowbuild.py SECONDS loramgr-args...
"""

import sys
import time

from loramgr.sections.backends import ort

_build_one = ort._build_one


def _slow_build_one(*args, **kwargs):  # type: ignore[no-untyped-def]
    out = _build_one(*args, **kwargs)
    time.sleep(float(sys.argv[1]))
    return out


ort._build_one = _slow_build_one

if __name__ == "__main__":
    from loramgr.cli import main

    main(sys.argv[2:])
