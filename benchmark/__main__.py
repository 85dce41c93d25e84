"""``python -m benchmark``: the command line, then a quick exit.

With ``BENCHMARK_PRELOAD`` set (the workflow does), the command runs in a child of the preload
server, which has torch and the suite imported already (benchmark/preload.py); otherwise here.

Python's normal shutdown frees every module one by one; with torch loaded that costs about one
CPU-second per process, i.e. per workflow job (measured by benchmarks/fixed_cost.py). When
``main`` returns, every file is written (atomically) and every MLflow call has returned, so the
process runs its exit handlers (logging, torch.distributed), flushes and leaves. An uncaught
exception (a bug) takes the normal path, traceback included.
"""

import atexit
import os
import sys

from .preload import run_via_server

code = run_via_server(sys.argv[1:])
if code is None:
    from .cli import main

    code = main()
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
