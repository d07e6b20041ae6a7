"""Interop with real IMAP clients from Debian over loopback and TLS: mbsync (isync),
offlineimap3 and mutt.

Each test starts its own server (see mailservers.py: ours by default,
``INTEROP_SERVERS=indimail_tw,dovecot`` adds Dovecot as the reference) and
checks both sides: what the client wrote locally and what the server holds,
read back with imaplib.  Two-way sync tests create folders, messages and flag
changes on both sides, sync, then sync again and expect both sides to agree
(and a further sync to change nothing).

Needs the ``isync``, ``offlineimap3`` and ``mutt`` packages (and ``dovecot-imapd``
for the Dovecot runs).  Under CI (``CI`` set) a missing client is a failure,
elsewhere a skip.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from mailservers import (HOST, LETTERS, imap_folders, imap_state, maildir_state, message,
                         servers_wanted, start_server)

# seconds: a bound on one client run, not a measurement
CLIENT_TIMEOUT = int(os.environ.get("CLIENT_TIMEOUT", 120))


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        reason = f"{program} is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the IMAP client interop tests: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(params=servers_wanted())
def server(request):
    base = tempfile.mkdtemp(prefix="itw-imapclients-")
    srv = start_server(request.param, base)
    try:
        yield srv
    finally:
        srv.stop()
        if os.environ.get("KEEP_INTEROP"):
            print(f"\nkept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def run(argv: list[str], server, **kw) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                                stdin=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        raise AssertionError(f"{argv[0]} did not finish in {CLIENT_TIMEOUT} s\n{out[-6000:]}"
                             f"\n--- server log (tail) ---\n{server.read_log()[-4000:]}") \
            from None
    assert result.returncode == 0, (
        f"{argv[0]} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
        f"\n--- stderr ---\n{result.stderr[-6000:]}"
        f"\n--- server log (tail) ---\n{server.read_log()[-4000:]}")
    return result


def write_local(maildir: str, msg: bytes, flags: str = "", new: bool = False) -> str:
    """A message in a local Maildir as a mail reader would leave it."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    name = f"{time.time_ns()}.local.interop"
    path = os.path.join(maildir, "new", name) if new else \
        os.path.join(maildir, "cur", f"{name}:2,{flags}")
    with open(path, "wb") as f:
        f.write(msg)
    return path


def set_local_flags(maildir: str, mid: str, flags: str) -> None:
    """Give the local message ``mid`` exactly the Maildir ``flags`` (moving it to cur/)."""
    for sub in ("cur", "new"):
        for name in os.listdir(os.path.join(maildir, sub)):
            path = os.path.join(maildir, sub, name)
            with open(path, "rb") as f:
                if f"<{mid}@interop.test>".encode() not in f.read():
                    continue
            base = name.split(":2,", 1)[0]
            os.rename(path, os.path.join(maildir, "cur", f"{base}:2,{''.join(sorted(flags))}"))
            return
    raise AssertionError(f"no local message {mid} in {maildir}")


def ids(*numbers: str) -> set[str]:
    return {f"<{n}@interop.test>" for n in numbers}


def flags(state: dict, n: str) -> set[str]:
    return set(state[f"<{n}@interop.test>"])


def seed_remote(server) -> None:
    """INBOX with two delivered messages; Work and Work.Projects with flagged mail."""
    server.deliver("alice", message("r1"))
    server.deliver("alice", message("r2"))
    with server.imap_session() as imap:
        for folder in ("Work", "Work.Projects"):
            assert imap.create(folder)[0] == "OK"
        assert imap.append("Work", "(\\Seen)", None, message("w1"))[0] == "OK"
        assert imap.append("Work", "(\\Flagged \\Seen)", None, message("w2"))[0] == "OK"
        assert imap.append("Work.Projects", "(\\Answered)", None, message("p1"))[0] == "OK"


def remote_change(server) -> None:
    """The second round's server-side changes: flags, a new message, a new folder."""
    with server.imap_session() as imap:
        imap.select("INBOX")
        typ, data = imap.search(None, "HEADER", "Message-ID", "r1@interop.test")
        assert typ == "OK" and data[0], data
        imap.store(data[0].decode(), "+FLAGS", "(\\Flagged \\Seen)")
        imap.select("Work")
        typ, data = imap.search(None, "HEADER", "Message-ID", "w1@interop.test")
        assert typ == "OK" and data[0], data
        imap.store(data[0].decode(), "-FLAGS", "(\\Seen)")
        imap.close()
        assert imap.append("Work", "(\\Draft)", None, message("w3"))[0] == "OK"
        assert imap.create("Archive2026")[0] == "OK"
        assert imap.append("Archive2026", "(\\Seen)", None, message("a1"))[0] == "OK"
    server.deliver("alice", message("r3"))


def check_converged(server, local: dict[str, str]) -> None:
    """Every folder: the same Message-IDs with the same flags on both sides."""
    with server.imap_session() as imap:
        folders = imap_folders(imap)
        for remote_name, local_dir in local.items():
            assert remote_name in folders, (remote_name, folders)
            there = imap_state(imap, remote_name)
            here = maildir_state(local_dir)
            assert here == there, (remote_name, here, there)


# -- mbsync (isync 1.4) --------------------------------------------------------------------

MBSYNCRC = """\
IMAPAccount interop
Host {host}
Port {port}
User {user}
Pass {password}
SSLType IMAPS
CertificateFile {cert}
PipelineDepth 8

IMAPStore remote
Account interop

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel interop
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
"""


def mbsync(server, config: str) -> str:
    return run([need("mbsync"), *os.environ.get("MBSYNC_FLAGS", "").split(), "-c", config,
                "-a"], server).stdout


def test_mbsync_two_way_sync_of_a_folder_tree(server):
    need("mbsync")
    work = os.path.join(server.base, "mbsync")
    local = os.path.join(work, "mail")
    os.makedirs(local)
    config = os.path.join(work, "mbsyncrc")
    user, password = server.login("alice")
    with open(config, "w") as f:
        f.write(MBSYNCRC.format(host=HOST, port=server.imaps, user=user, password=password,
                                cert=server.cert, local=local))
    seed_remote(server)
    # a local-only folder tree with a flagged message, and a local INBOX message
    write_local(os.path.join(local, "Personal"), message("l1"), "FS")
    write_local(os.path.join(local, "Personal", "Family"), message("l2"), "")
    write_local(os.path.join(local, "INBOX"), message("l3"), "S")

    mbsync(server, config)

    dirs = {"INBOX": "INBOX", "Work": "Work", "Work.Projects": "Work/Projects",
            "Personal": "Personal", "Personal.Family": "Personal/Family"}
    local_dirs = {remote: os.path.join(local, path) for remote, path in dirs.items()}
    assert set(maildir_state(local_dirs["INBOX"])) == ids("r1", "r2", "l3")
    work_state = maildir_state(local_dirs["Work"])
    assert set(work_state) == ids("w1", "w2")
    assert flags(work_state, "w2") == {"\\Flagged", "\\Seen"}
    assert flags(maildir_state(local_dirs["Work.Projects"]), "p1") == {"\\Answered"}
    with server.imap_session() as imap:
        assert {"Personal", "Personal.Family"} <= imap_folders(imap)
        assert flags(imap_state(imap, "Personal"), "l1") == {"\\Flagged", "\\Seen"}
        assert set(imap_state(imap, "Personal.Family")) == ids("l2")
        assert flags(imap_state(imap, "INBOX"), "l3") == {"\\Seen"}
    check_converged(server, local_dirs)

    # changes on both sides, then two syncs: converge, then nothing left to do
    remote_change(server)
    set_local_flags(local_dirs["INBOX"], "r2", "RS")
    set_local_flags(local_dirs["Personal"], "l1", "S")          # unflag locally
    write_local(local_dirs["Work"], message("w4"), new=True)    # new, unseen
    write_local(os.path.join(local, "Local2"), message("n1"), "F")

    mbsync(server, config)
    local_dirs["Archive2026"] = os.path.join(local, "Archive2026")
    local_dirs["Local2"] = os.path.join(local, "Local2")
    check_converged(server, local_dirs)
    with server.imap_session() as imap:
        inbox = imap_state(imap, "INBOX")
        assert set(inbox) == ids("r1", "r2", "r3", "l3")
        assert flags(inbox, "r1") == {"\\Flagged", "\\Seen"}
        assert flags(inbox, "r2") == {"\\Answered", "\\Seen"}
        assert flags(imap_state(imap, "Personal"), "l1") == {"\\Seen"}
        work_state = imap_state(imap, "Work")
        assert set(work_state) == ids("w1", "w2", "w3", "w4")
        assert flags(work_state, "w1") == set()
        assert flags(work_state, "w3") == {"\\Draft"}
        assert flags(work_state, "w4") == set()
        assert flags(imap_state(imap, "Local2"), "n1") == {"\\Flagged"}
    assert set(maildir_state(local_dirs["Archive2026"])) == ids("a1")

    # a deletion on each side propagates (Expunge Both)
    with server.imap_session() as imap:
        imap.select("Work")
        typ, data = imap.search(None, "HEADER", "Message-ID", "w2@interop.test")
        imap.store(data[0].decode(), "+FLAGS", "(\\Deleted)")
        imap.expunge()
    set_local_flags(local_dirs["INBOX"], "l3", "ST")
    mbsync(server, config)
    check_converged(server, local_dirs)
    assert set(maildir_state(local_dirs["Work"])) == ids("w1", "w3", "w4")
    assert set(maildir_state(local_dirs["INBOX"])) == ids("r1", "r2", "r3")

    before = {name: maildir_state(path) for name, path in local_dirs.items()}
    mbsync(server, config)
    assert {name: maildir_state(path) for name, path in local_dirs.items()} == before
    check_converged(server, local_dirs)


# -- offlineimap3 --------------------------------------------------------------------------

OFFLINEIMAPRC = """\
[general]
accounts = interop
metadata = {work}/metadata
ui = basic

[Account interop]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}
sep = /

[Repository remote]
type = IMAP
remotehost = localhost
remoteport = {port}
remoteuser = {user}
remotepass = {password}
ssl = yes
sslcacertfile = {cert}
maxconnections = 1
createfolders = True
"""


def offlineimap(server, config: str) -> str:
    result = run([need("offlineimap"), "-c", config, "-o", "-u", "basic"], server)
    out = result.stdout + result.stderr
    assert "ERROR" not in out, out[-6000:] + "\n" + server.read_log()[-4000:]
    return out


def test_offlineimap_two_way_sync_of_a_folder_tree(server):
    need("offlineimap")
    work = os.path.join(server.base, "offlineimap")
    local = os.path.join(work, "mail")
    os.makedirs(local)
    config = os.path.join(work, "offlineimaprc")
    user, password = server.login("alice")
    with open(config, "w") as f:
        f.write(OFFLINEIMAPRC.format(work=work, local=local, port=server.imaps, user=user,
                                     password=password, cert=server.cert))
    seed_remote(server)

    offlineimap(server, config)

    # offlineimap names local folders after the remote ones, "." shown as "/" (sep)
    local_dirs = {"INBOX": os.path.join(local, "INBOX"), "Work": os.path.join(local, "Work"),
                  "Work.Projects": os.path.join(local, "Work", "Projects")}
    assert set(maildir_state(local_dirs["INBOX"])) == ids("r1", "r2")
    assert flags(maildir_state(local_dirs["Work"]), "w2") == {"\\Flagged", "\\Seen"}
    assert flags(maildir_state(local_dirs["Work.Projects"]), "p1") == {"\\Answered"}
    check_converged(server, local_dirs)

    # both sides change; a local folder tree is created on the server
    remote_change(server)
    set_local_flags(local_dirs["INBOX"], "r2", "RS")
    write_local(local_dirs["Work"], message("w4"), "S")
    write_local(os.path.join(local, "Personal"), message("l1"), "F")
    write_local(os.path.join(local, "Personal", "Family"), message("l2"), "")

    offlineimap(server, config)
    offlineimap(server, config)     # folders created on the server sync their mail now
    local_dirs.update({"Archive2026": os.path.join(local, "Archive2026"),
                       "Personal": os.path.join(local, "Personal"),
                       "Personal.Family": os.path.join(local, "Personal", "Family")})
    check_converged(server, local_dirs)
    with server.imap_session() as imap:
        inbox = imap_state(imap, "INBOX")
        assert set(inbox) == ids("r1", "r2", "r3")
        assert flags(inbox, "r1") == {"\\Flagged", "\\Seen"}
        assert flags(inbox, "r2") == {"\\Answered", "\\Seen"}
        work_state = imap_state(imap, "Work")
        assert set(work_state) == ids("w1", "w2", "w3", "w4")
        assert flags(work_state, "w1") == set()
        assert flags(work_state, "w4") == {"\\Seen"}
        assert flags(imap_state(imap, "Personal"), "l1") == {"\\Flagged"}
        assert set(imap_state(imap, "Personal.Family")) == ids("l2")
    assert set(maildir_state(local_dirs["Archive2026"])) == ids("a1")

    before = {name: maildir_state(path) for name, path in local_dirs.items()}
    offlineimap(server, config)
    assert {name: maildir_state(path) for name, path in local_dirs.items()} == before


# -- mutt ----------------------------------------------------------------------------------

MUTTRC = """\
set folder = "imaps://{user_url}@localhost:{port}/"
set imap_pass = "{password}"
set spoolfile = "+INBOX"
set certificate_file = "{cert}"
set ssl_starttls = no
set header_cache = ""
set message_cachedir = ""
set imap_check_subscribed = no
set confirmcreate = no
set confirmappend = no
set quit = yes
set move = no
set wait_key = no
set mail_check_stats = no
set timeout = 1
set sort = date-received
"""


def run_mutt(server, config: str, keys: str) -> str:
    """mutt on a pseudo-terminal, driven by ``push``ed keys; returns its screen output."""
    mutt = need("mutt")
    env = dict(os.environ, TERM="vt100", HOME=os.path.dirname(config), LANG="C.UTF-8")
    pid, fd = pty.fork()
    if pid == 0:        # the child: mutt on the pty
        try:
            os.execve(mutt, [mutt, "-n", "-F", config, "-e", f"push '{keys}'"], env)
        finally:
            os._exit(127)
    output = bytearray()
    deadline = time.monotonic() + CLIENT_TIMEOUT
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            output += chunk
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"mutt did not finish:\n{output[-4000:].decode(errors='replace')}"
                             f"\n--- server log ---\n{server.read_log()[-4000:]}")
    os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-4000:]
    return text


def test_mutt_reads_lists_and_copies_over_imaps(server):
    need("mutt")
    work = os.path.join(server.base, "mutt")
    os.makedirs(work)
    user, password = server.login("alice")
    config = os.path.join(work, "muttrc")
    with open(config, "w") as f:
        f.write(MUTTRC.format(user_url=user.replace("@", "%40"), port=server.imaps,
                              password=password, cert=server.cert))
    server.deliver("alice", message("m1", "first for mutt", "mutt reads this body"))
    with server.imap_session() as imap:
        assert imap.create("Work")[0] == "OK"
        assert imap.append("Work", "(\\Seen)", None,
                           message("mw1", "in work", "the work folder's body"))[0] == "OK"
    inbox_out = os.path.join(work, "inbox-message.txt")
    work_out = os.path.join(work, "work-message.txt")
    keys = ("<display-message><exit>"
            "<pipe-message>cat > " + inbox_out + "<enter>"
            "<copy-message>=Saved<enter>"
            "<change-folder>=Work<enter>"
            "<pipe-message>cat > " + work_out + "<enter>"
            "<quit>")
    run_mutt(server, config, keys)

    with open(inbox_out) as f:
        text = f.read()
    assert "Subject: first for mutt" in text and "mutt reads this body" in text
    with open(work_out) as f:
        text = f.read()
    assert "Subject: in work" in text and "the work folder's body" in text
    with server.imap_session() as imap:
        assert "Saved" in imap_folders(imap)
        saved = imap_state(imap, "Saved")
        assert set(saved) == ids("m1")
        # mutt read the INBOX message: \\Seen there, and the copy keeps it
        assert "\\Seen" in flags(imap_state(imap, "INBOX"), "m1")
        assert "\\Seen" in flags(saved, "m1")
        typ, data = imap.select("Saved", readonly=True)
        typ, data = imap.fetch("1", "(BODY.PEEK[TEXT])")
        assert b"mutt reads this body" in data[0][1]


assert LETTERS  # the flag letters the local Maildir checks rely on
