#!/usr/bin/env python3
"""CPU seconds (user + system, reaped children included) used so far by a server.

    bench/proc_cpu.py --tree PID            # PID and every descendant (twistd + workers)
    bench/proc_cpu.py --comm master,smtpd   # every process with one of these names
    bench/proc_cpu.py --tree PID --user-system   # user and system seconds apart

Prints one number.  Run it before and after a load: the difference is the
server's CPU for that load, a figure that stays meaningful when the machine is
shared and wall-clock rates swing (a process that exits in between is counted
through its parent's reaped-children times, as long as the parent is counted).
"""

from __future__ import annotations

import argparse
import os

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[str, int, float, float] | None:
    """(name, parent pid, user and system CPU seconds) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is state; utime, stime, cutime, cstime are fields 14-17 of stat(5)
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return name, ppid, (utime + cutime) / TICK, (stime + cstime) / TICK


def processes() -> dict[int, tuple[str, int, float, float]]:
    table = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            info = _stat(pid)
            if info is not None:
                table[int(pid)] = info
    return table


def tree_cpu(root: int, table: dict[int, tuple[str, int, float, float]]
             ) -> tuple[float, float]:
    """(user, system) seconds of ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    user = system = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            user += table[pid][2]
            system += table[pid][3]
        todo.extend(children.get(pid, ()))
    return user, system


def comm_cpu(names: set[str], table: dict[int, tuple[str, int, float, float]]
             ) -> tuple[float, float]:
    found = [(u, s) for name, _, u, s in table.values() if name in names]
    return sum(u for u, _ in found), sum(s for _, s in found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--tree", type=int, help="a process id: it and its descendants")
    group.add_argument("--comm", help="comma-separated process names")
    parser.add_argument("--user-system", action="store_true",
                        help="print user and system seconds instead of their sum")
    args = parser.parse_args()
    table = processes()
    if args.tree is not None:
        user, system = tree_cpu(args.tree, table)
    else:
        user, system = comm_cpu(set(args.comm.split(",")), table)
    print(f"{user:.2f} {system:.2f}" if args.user_system else f"{user + system:.2f}")


if __name__ == "__main__":
    main()
