"""Tests for megengine/distributed/server.py: the Client's values as upstream's XML-RPC server
returns them, and where a Server serves from."""
import gc
import os
import threading
import xmlrpc.client
from xmlrpc.server import SimpleXMLRPCServer

import numpy as np
import pytest

from megengine.distributed.server import Client


@pytest.fixture(scope="module")
def upstream_proxy():
    """An XML-RPC server as upstream's (``allow_none=True``) storing user values: the oracle."""
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    values = {}
    server.register_function(lambda key, val: values.__setitem__(key, val) or True, "user_set")
    server.register_function(values.__getitem__, "user_get")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield xmlrpc.client.ServerProxy("http://127.0.0.1:%d" % server.server_address[1],
                                    allow_none=True)
    server.shutdown()
    server.server_close()


def _client():
    import torch.distributed as tdist

    return Client._over(tdist.HashStore(), 5)


@pytest.mark.parametrize("value", [
    (2, 3), [1, (2, "a")], {"shape": (4, 5), "dtype": "float32"}, b"\x00\x01", None, True, 1.5,
    "float32", 2 ** 31 - 1, [], {}])
def test_user_get_returns_values_as_upstreams_xmlrpc_server(upstream_proxy, value):
    # earlier versions of this fork returned a tuple as a tuple (upstream: a list)
    client = _client()
    client.user_set("k", value)
    got, want = client.user_get("k"), (upstream_proxy.user_set("k", value),
                                       upstream_proxy.user_get("k"))[1]
    assert type(got) is type(want) and got == want


@pytest.mark.parametrize("value,what", [(np.zeros(2), "ndarray"), (np.int64(3), "int64"),
                                        (2 ** 31, "int exceeds"), ({1: 2}, "key must be"),
                                        ({1, 2}, "set")])
def test_user_set_refuses_what_upstreams_xmlrpc_cannot_carry_and_sets_nothing(
        upstream_proxy, value, what):
    # earlier versions of this fork pickled any value; upstream's proxy raises for these
    with pytest.raises((TypeError, OverflowError), match=what):
        upstream_proxy.user_set("bad", value)
    client = _client()
    with pytest.raises((TypeError, OverflowError), match=f"user_set.*'bad'.*{what}.*tolist"):
        client.user_set("bad", value)
    assert not client._store.check(["megengine/user/bad"])


@pytest.mark.parametrize("value", ["a\x00b", ["esc \x1b[0m"], {"k": "\x0c"}])
def test_user_set_refuses_a_str_xml_cannot_hold_and_sets_nothing(upstream_proxy, value):
    # XML 1.0 has no control characters but tab and newlines: upstream's server fails to read
    # the request, so its user_set raises; here user_set stored it and every rank's user_get
    # raised ExpatError
    with pytest.raises(xmlrpc.client.Fault):
        upstream_proxy.user_set("ctrl", value)
    client = _client()
    with pytest.raises(ValueError, match=r"user_set.*'ctrl'.*control character.*pickle"):
        client.user_set("ctrl", value)
    assert not client._store.check(["megengine/user/ctrl"])
    client.user_set("ctrl", "tab\tand\nnewline\r")  # the ones XML holds
    assert client.user_get("ctrl") == (upstream_proxy.user_set("ctrl", "tab\tand\nnewline\r"),
                                       upstream_proxy.user_get("ctrl"))[1]


def _threads():
    return set(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or not hasattr(os, "fork"),
                    reason="counts this process's threads in /proc (Linux)")
def test_a_server_serves_from_a_process_of_its_own_that_ends_with_it():
    # torch's store server looks up the host name of each rank that connects: served from a
    # thread of this process (earlier versions of this fork), a rank forked from here during
    # such a lookup inherited glibc's locked resolver lock and waited forever in its own first
    # lookup (measured: 5 of 60 rounds of 6 ranks forked with mp.Process after a Server hung;
    # none of 260 with the store in a process of its own). Checked here: serving adds no
    # thread to this process, so forking from it stays safe.
    import datetime

    import torch.distributed as tdist

    from megengine.distributed import Server

    before = _threads()
    server = Server(0)
    rank = tdist.TCPStore("localhost", server.py_server_port, is_master=False,
                          timeout=datetime.timedelta(seconds=10))  # a rank, connecting
    rank.set("k", "v")
    assert rank.get("k") == b"v"
    del rank
    assert not _threads() - before  # (other threads may end meanwhile)
    pid = server._pid
    assert pid != os.getpid()
    os.kill(pid, 0)  # serving
    del server
    gc.collect()  # the Server's end: its process is stopped and reaped
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_port_a_server_cannot_listen_on_is_named_and_no_process_is_left():
    from megengine.distributed import Server

    first = Server(0)
    with pytest.raises(RuntimeError, match=f"Server: cannot listen on port "
                                           f"{first.py_server_port}"):
        Server(first.py_server_port)


@pytest.mark.parametrize("port, kind, words", [
    (1.5, TypeError, "got float 1.5"),  # upstream 1.13: TypeError (socket.bind's)
    ("1234", TypeError, "got str '1234'"),
    (70000, ValueError, "got 70000"),  # upstream 1.13: OverflowError (socket.bind's)
    (-1, ValueError, "got -1"),
])
def test_a_bad_port_is_refused_before_any_process_starts(port, kind, words):
    from megengine.distributed import Server

    with pytest.raises(kind, match=r"Server: port must be an int in \[0, 65535\], " + words):
        Server(port)
