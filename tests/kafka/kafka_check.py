"""Shared helpers of the Kafka client scripts: failing with a clear message, the one-line JSON
summary, and a deadline for the whole script.

Every script in tests/kafka exits 0 and prints one line `summary {...}` when every check held,
and exits 1 with `FAIL: <what>` on stderr otherwise. `crates/gearbox/tests/kafka_clients.rs`
runs them against `gearbox serve --kafka` and reads the summary.
"""

import json
import signal
import sys
import time


class CheckFailed(Exception):
    """A check did not hold."""


def check(ok, what):
    """Raises CheckFailed with `what` unless `ok`."""
    if not ok:
        raise CheckFailed(what)


def summary(**fields):
    """Prints the one-line JSON summary the Rust test parses."""
    print("summary " + json.dumps(fields, sort_keys=True), flush=True)


def run(main, deadline_s):
    """Runs `main()` under an overall deadline; turns a failure into exit status 1."""

    def on_alarm(_signum, _frame):
        raise CheckFailed(f"the script did not finish within its deadline of {deadline_s} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(deadline_s)
    try:
        main()
    except CheckFailed as e:
        print(f"FAIL: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        signal.alarm(0)


def wait_for(what, cond, timeout_s, step=None):
    """Calls `step()` (if given) and `cond()` until `cond()` is true; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if step is not None:
            step()
        if cond():
            return
        check(time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}")
        if step is None:
            time.sleep(0.05)
