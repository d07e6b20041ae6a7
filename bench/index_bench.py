"""Maildir index on a big folder (run by hand, not a test).

    .venv/bin/python bench/index_bench.py [MESSAGES] [DIR]

Creates a folder of MESSAGES (default 100,000) small messages in ``new/``
(under DIR, default a temporary directory, removed afterwards), then, each in a
fresh process so that peak RSS belongs to that step alone:

* first open: FolderIndex.open on the unindexed folder (reads every file once);
* rescan: open after new/ and cur/ changed (lists them, matches every name);
* reopen: FolderIndex.open of the indexed folder (no file reads, no per-file stat);
* reopen + records(): every MessageRecord (what FETCH 1:* needs) and sync();
* reopen + uids()/flags(): the light path a session can keep instead of records.

Prints seconds and peak RSS (MB, ru_maxrss) of each step, and the index size.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from indimail_tw.fsutil import make_maildir  # noqa: E402
from indimail_tw.maildir.index import INDEX_NAME, FolderIndex  # noqa: E402

BODY = (b"From: a@example.com\nTo: b@example.com\nSubject: message %d\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\n\nhello %d\n")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def populate(folder: str, count: int) -> None:
    make_maildir(folder)
    new = os.path.join(folder, "new")
    base = int(time.time()) - count
    for i in range(count):
        data = BODY % (i, i)
        name = f"{base + i}.M{i % 1000000}P4242Q{i}.bench.example,S={len(data)}"
        path = os.path.join(new, name)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (base + i, base + i))


def step(kind: str, folder: str) -> dict:
    if kind == "rescan":                # new/ and cur/ differ from the stored mtimes
        age = time.time() - 3600        # (an hour old: the next open need not rescan)
        for sub in ("new", "cur"):
            os.utime(os.path.join(folder, sub), (age, age))
    start = time.perf_counter()
    before = peak_mb()
    ix = FolderIndex.open(folder)
    opened = time.perf_counter()
    result = {"step": kind, "open_s": opened - start, "messages": len(ix),
              "rss_after_import_mb": before}
    if kind == "records":
        records = ix.records()
        result["records_s"] = time.perf_counter() - opened
        result["records"] = len(records)
        t = time.perf_counter()
        ix.sync()
        result["sync_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ix.changed_since_last_sync()
        result["poll_s"] = time.perf_counter() - t
    elif kind == "light":
        t = time.perf_counter()
        uids = ix.uids()
        flags = [ix.flags(uid) for uid in uids]
        result["uids_flags_s"] = time.perf_counter() - t
        result["records"] = len(flags)
    ix.close()
    result["peak_rss_mb"] = peak_mb()
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--step":
        print(json.dumps(step(sys.argv[2], sys.argv[3])))
        return
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    base = sys.argv[2] if len(sys.argv) > 2 else None
    top = tempfile.mkdtemp(prefix="index-bench-", dir=base)
    folder = os.path.join(top, "Maildir")
    try:
        t = time.perf_counter()
        populate(folder, count)
        print(f"created {count} messages in {time.perf_counter() - t:.1f} s")
        for kind in ("first", "rescan", "reopen", "records", "light"):
            out = subprocess.run([sys.executable, __file__, "--step", kind, folder],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            extra = "".join(f", {k} {v:.3f} s" for k, v in r.items()
                            if k.endswith("_s") and k != "open_s")
            print(f"{kind:8} open {r['open_s']:.3f} s{extra}, {r['messages']} messages, "
                  f"peak RSS {r['peak_rss_mb']:.1f} MB "
                  f"(after imports {r['rss_after_import_mb']:.1f} MB)")
        size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
                   if n.startswith(INDEX_NAME))
        print(f"index files: {size / 1e6:.1f} MB")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
