"""Kill -9 a process that is enqueueing, again and again: no acknowledged message is lost."""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import sys

from indimail_tw.datafile import read_data
from indimail_tw.queue.store import QueueStore

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash_child.py")
ROUNDS = 6
WAIT = 120.0          # a guard against a hung child, not a timing assertion


def read_line(proc: subprocess.Popen) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    assert ready, "the child printed nothing"
    line = proc.stdout.readline()
    assert line, f"the child died: {proc.wait()}"
    return line.decode().strip()


def check(data: bytes) -> int:
    head, _, body = data.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode().splitlines())
    assert fields["X-Sum"] == hashlib.sha256(body).hexdigest()
    return int(fields["X-Seq"])


def test_sigkill_loses_no_acknowledged_message(tmp_path):
    base = str(tmp_path)
    rng = random.Random(20241125)
    acked: set[str] = set()
    for round_ in range(ROUNDS):
        proc = subprocess.Popen([sys.executable, CHILD, base, str(round_ + 1)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            if round_ == 2:            # killed while starting up (maybe mid-recovery)
                continue
            first = read_line(proc)
            assert first.startswith("READY"), first
            target = 0 if round_ == 0 else rng.randint(1, 200)
            seen = 0
            while seen < target:
                line = read_line(proc)
                assert not line.startswith("ERROR"), line
                acked.add(line)
                seen += 1
        finally:
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate()
        # everything printed before the kill was acknowledged too
        acked.update(line for line in rest.decode().split("\n")[:-1]
                     if line and not line.startswith("ERROR"))

    found: dict[str, int] = {}
    corrupt = []
    for name in ("queue1", "queue2"):
        store = QueueStore(os.path.join(base, name))
        store.open()
        report = store.recover()
        corrupt += report.corrupt
        for m in report.messages:
            found[m.id] = check(read_data(store.mess_path(m.id), m.size))
        for sub in ("tmp",):
            assert os.listdir(os.path.join(store.path, sub)) == []
        store.close()
    missing = acked - set(found)
    assert not corrupt
    assert not missing, f"{len(missing)} acknowledged messages lost"
    seqs = list(found.values())
    duplicates = len(seqs) - len(set(seqs))
    unacknowledged = len(set(found) - acked)
    print(f"\ncrash test: {ROUNDS} kills, {len(acked)} acknowledged, all present; "
          f"{unacknowledged} committed but unacknowledged, {duplicates} duplicates")
    assert duplicates == 0
