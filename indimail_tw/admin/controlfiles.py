"""The control-file entries that make a domain local (IndiMail's add_control/del_control).

``rcpthosts`` (or ``morercpthosts`` + its cdb once rcpthosts holds 50 entries),
``virtualdomains`` (``domain:domain``), optionally ``chkrcptdomains`` and
``etrnhosts``.  Every change is recorded in an :class:`~indimail_tw.admin.site.Undo`
so a failed operation takes it back.  qmail's ``users/assign`` is not written:
indimail_tw resolves virtual domains directly.
"""

from __future__ import annotations

import contextlib
import os

from indimail_tw import fsutil
from indimail_tw.admin.site import Undo, fs_error
from indimail_tw.config.control import ControlDir

RCPTHOSTS_LIMIT = 50  # IndiMail: beyond this, new domains go to morercpthosts(.cdb)
LISTS = ("rcpthosts", "morercpthosts", "chkrcptdomains", "etrnhosts")


def _key(entry: str) -> str:
    return entry.strip().lower()


def _ensure_dir(control: ControlDir, undo: Undo) -> None:
    try:
        created = fsutil.make_dirs(control.path, 0o755)
    except OSError as e:
        raise fs_error("cannot create directory", control.path, e) from e
    undo.created(created)


def _edit(action: str, control: ControlDir, name: str, fn, *args):
    try:
        return fn(*args)
    except OSError as e:
        raise fs_error(f"cannot {action}", control.file(name), e) from e


def add_entry(control: ControlDir, name: str, line: str, undo: Undo) -> bool:
    """Append ``line`` to list ``name`` unless present; undo removes it again."""
    _ensure_dir(control, undo)
    existed = control.exists(name)
    added = _edit("update", control, name, control.add_line, name, line)
    if added:
        undo.push(_take_back, control, name, line, existed)
    return added


def _take_back(control: ControlDir, name: str, line: str, existed: bool) -> None:
    """Undo of add_entry: remove the line; drop a file the add created, if now empty."""
    control.remove_line(name, line)
    if not existed and not control.raw_lines(name):
        for path in (control.file(name), control.file(name) + ".cdb"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def remove_entries(control: ControlDir, name: str, domain: str, undo: Undo, *,
                   keyed: bool = False) -> list[str]:
    """Remove the entries naming ``domain`` (``keyed``: entries ``domain:...``).

    Returns the removed lines; undo appends them again.
    """
    def matches(entry: str) -> bool:
        key = entry.partition(":")[0] if keyed else entry
        return _key(key) == domain

    removed = [entry for entry in control.lines(name) if matches(entry)]
    if not removed:
        return []
    _edit("update", control, name, control.remove_matching, name, matches)
    for line in removed:
        undo.push(control.add_line, name, line)
    return removed


def _compile(control: ControlDir, name: str) -> None:
    try:
        control.make_cdb(name)
    except OSError as e:
        raise fs_error("cannot compile", control.file(name) + ".cdb", e) from e


def is_rcpthost(control: ControlDir, domain: str) -> bool:
    return any(_key(e) == domain for name in ("rcpthosts", "morercpthosts")
               for e in control.lines(name))


def add_rcpthost(control: ControlDir, domain: str, undo: Undo) -> str | None:
    """Add ``domain`` to rcpthosts, or to morercpthosts (+cdb) past 50 entries.

    Returns the file changed, None if the domain was already listed.
    """
    if is_rcpthost(control, domain):
        return None
    if len(control.lines("rcpthosts")) >= RCPTHOSTS_LIMIT:
        _ensure_dir(control, undo)
        undo.push(_compile_if_present, control, "morercpthosts")  # after the line goes
        add_entry(control, "morercpthosts", domain, undo)
        _compile(control, "morercpthosts")
        return "morercpthosts"
    add_entry(control, "rcpthosts", domain, undo)
    return "rcpthosts"


def remove_rcpthost(control: ControlDir, domain: str, undo: Undo) -> list[str]:
    changed = []
    if remove_entries(control, "rcpthosts", domain, undo):
        changed.append("rcpthosts")
    undo.push(_compile_if_present, control, "morercpthosts")
    if remove_entries(control, "morercpthosts", domain, undo):
        _compile(control, "morercpthosts")
        changed.append("morercpthosts")
    return changed


def _compile_if_present(control: ControlDir, name: str) -> None:
    if control.exists(name):
        control.make_cdb(name)


def add_local_domain(control: ControlDir, domain: str, undo: Undo, *,
                     chkrcpt: bool = False, etrn: bool = False) -> list[str]:
    """All entries of a new (real or alias) domain; returns the files changed."""
    changed = []
    where = add_rcpthost(control, domain, undo)
    if where:
        changed.append(where)
    if add_entry(control, "virtualdomains", f"{domain}:{domain}", undo):
        changed.append("virtualdomains")
    if chkrcpt and add_entry(control, "chkrcptdomains", domain, undo):
        changed.append("chkrcptdomains")
    if etrn and add_entry(control, "etrnhosts", domain, undo):
        changed.append("etrnhosts")
    return changed


def remove_local_domain(control: ControlDir, domain: str, undo: Undo) -> list[str]:
    """Remove every entry of ``domain``; returns the files changed."""
    changed = remove_rcpthost(control, domain, undo)
    if remove_entries(control, "virtualdomains", domain, undo, keyed=True):
        changed.append("virtualdomains")
    for name in ("chkrcptdomains", "etrnhosts"):
        if remove_entries(control, name, domain, undo):
            changed.append(name)
    return changed
