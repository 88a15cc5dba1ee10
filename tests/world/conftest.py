"""What the fidelity tests of tests/world share."""

import subprocess
import sys

import pytest


@pytest.fixture
def start():
    """Starts a server of tests/world with arguments; returns its process and base URL."""
    procs = []

    def start(script, *args):
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        return proc, line.split()[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
