"""orchd.hops: this instance's Via entry, and whether a received Via names it."""

from __future__ import annotations

import os
import re

from orchd import hops


def test_entry_is_a_pseudonym_made_once_per_process():
    assert re.fullmatch(r"orchd-[0-9a-f]{12}", hops.TOKEN)
    assert f"1.1 {hops.TOKEN}" == hops.VIA


def test_seen_here_only_for_this_instances_received_by():
    token = hops.TOKEN
    assert not hops.seen_here(None)
    assert not hops.seen_here("")
    assert not hops.seen_here("1.1 orchd-000000000000")  # another orchd
    assert not hops.seen_here(f"1.1 edge ({token})")  # only named in a comment
    assert not hops.seen_here(f"1.1 {token}x")
    assert hops.seen_here(f"1.1 {token}")
    assert hops.seen_here(f"1.0 fred, HTTP/1.1 {token} (orchd)")
    assert hops.seen_here(f"1.0 fred,1.1  {token}")


def test_via_after_appends_this_hop():
    assert hops.via_after(None) == hops.VIA
    assert hops.via_after("1.0 fred") == f"1.0 fred, {hops.VIA}"


def test_forked_processes_share_the_token():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its token and leave at once
        try:
            os.write(write, hops.TOKEN.encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        got = os.read(read, 100).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert got == hops.TOKEN
