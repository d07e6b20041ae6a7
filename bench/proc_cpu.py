#!/usr/bin/env python3
"""CPU seconds (user + system, reaped children included) used so far by a server.

    bench/proc_cpu.py --tree PID            # PID and every descendant (twistd + workers)
    bench/proc_cpu.py --comm master,smtpd   # every process with one of these names

Prints one number.  Run it before and after a load: the difference is the
server's CPU for that load, a figure that stays meaningful when the machine is
shared and wall-clock rates swing (a process that exits in between is counted
through its parent's reaped-children times, as long as the parent is counted).
"""

from __future__ import annotations

import argparse
import os

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(name, parent pid, CPU seconds) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is state; utime, stime, cutime, cstime are fields 14-17 of stat(5)
    ppid = int(fields[1])
    cpu = sum(int(v) for v in fields[11:15]) / TICK
    return name, ppid, cpu


def processes() -> dict[int, tuple[str, int, float]]:
    table = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            info = _stat(pid)
            if info is not None:
                table[int(pid)] = info
    return table


def tree_cpu(root: int, table: dict[int, tuple[str, int, float]]) -> float:
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid][2]
        todo.extend(children.get(pid, ()))
    return total


def comm_cpu(names: set[str], table: dict[int, tuple[str, int, float]]) -> float:
    return sum(cpu for name, _, cpu in table.values() if name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tree", type=int, help="a process id: it and its descendants")
    group.add_argument("--comm", help="comma-separated process names")
    args = parser.parse_args()
    table = processes()
    if args.tree is not None:
        print(f"{tree_cpu(args.tree, table):.2f}")
    else:
        print(f"{comm_cpu(set(args.comm.split(',')), table):.2f}")


if __name__ == "__main__":
    main()
