"""`Server`: upstream's rendezvous server for a launcher or a hand-started job, and `get_free_ports`.

A ``launcher`` starts a ``Server(port)`` on the master machine, as upstream's, and each
worker's ``init_process_group(master_ip, port, ...)`` reaches it. Without one, rank 0's
``init_process_group`` hosts the rendezvous (torch's TCPStore) itself, so a hand-started job
needs no Server; code written for upstream that starts one first still works: the Server hosts
the TCPStore on ``port`` and every rank, rank 0 included, joins it as a client. The Server must
run on rank 0's machine (upstream's master node).

The store runs in a process of its own, forked when the Server is made: torch's store server
looks up each connecting peer's host name, and a rank forked while that lookup held glibc's
resolver lock would wait forever for the lock in its own first lookup.
"""
import datetime
import os
import signal
import socket
import tempfile
import weakref
import xmlrpc.client
from xml.parsers.expat import ExpatError
from typing import List

from ..core.dtype_rules import ArgumentTypeError

__all__ = ["Server", "Client", "get_free_ports"]


def _marker(port):
    """The file by which a Server tells processes on its machine that it holds ``port``: a
    foreign program on the port cannot be asked (a store client would wait on it forever)."""
    return os.path.join(tempfile.gettempdir(), f"megengine-distributed-server-{port}")


def _remove_marker(path, pid):
    try:
        with open(path) as f:
            if f.read().strip() == str(pid):
                os.remove(path)
    except OSError:
        pass


class Server:
    """Host the rendezvous of ``init_process_group`` on ``port`` of this machine (0: a free
    port, read it back from ``py_server_port``). Keep the object alive until every rank has
    joined; it serves until it is garbage collected (or this process ends)."""

    def __init__(self, port: int = 0):
        if not isinstance(port, int) or isinstance(port, bool):  # (upstream: TypeError)
            raise ArgumentTypeError(f"Server: port must be an int in [0, 65535], got "
                                    f"{type(port).__name__} {port!r}")
        if not 0 <= port < 65536:
            raise ValueError(f"Server: port must be an int in [0, 65535], got {port!r}")
        if not hasattr(os, "fork"):  # no fork, so no forked rank to deadlock: serve from here
            self._store = _listen(port)
            self.py_server_port, self._pid = self._store.port, os.getpid()
        else:
            self.py_server_port, self._pid, stop = _fork_store_process(port)
            weakref.finalize(self, _stop_store_process, self._pid, stop)
        path = _marker(self.py_server_port)
        with open(path, "w") as f:
            f.write(str(self._pid))
        weakref.finalize(self, _remove_marker, path, self._pid)

    @property
    def port(self) -> int:
        return self.py_server_port

    def __repr__(self):
        return f"<megengine.distributed.Server on port {self.py_server_port}>"


def _listen(port):
    import torch.distributed as dist

    try:
        return dist.TCPStore("localhost", port, is_master=True, wait_for_workers=False,
                             timeout=datetime.timedelta(seconds=30))
    except Exception as error:  # torch's text does not say which port
        raise RuntimeError(f"Server: cannot listen on port {port}: {error}") from error


def _fork_store_process(port):
    """Fork the process that hosts the store: (its port, its pid, the pipe end that stops it).
    It serves until a byte or end-of-file arrives on that pipe, so it also ends with this
    process (and with the ranks forked from it, which hold copies of the pipe end)."""
    import torch.distributed  # noqa: F401  (imported here: the child must not import after fork)

    stop_r, stop_w = os.pipe()
    said_r, said_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the store's process: nothing of the parent runs here, not even atexit
        status = 1
        try:
            os.close(stop_w)
            os.close(said_r)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the owner's to handle
            try:
                store = _listen(port)
                os.write(said_w, f"ok {store.port}".encode())
            except Exception as error:  # noqa: BLE001  (told to the owner, which raises it)
                os.write(said_w, f"error {error}".encode())
                raise
            os.close(said_w)
            os.read(stop_r, 1)
            status = 0
        finally:
            os._exit(status)
    os.close(stop_r)
    os.close(said_w)
    with os.fdopen(said_r, "rb") as said:  # read to its end: torch's errors span lines
        answer = said.read().decode(errors="replace").rstrip("\n")
    if not answer.startswith("ok "):
        _stop_store_process(pid, stop_w)
        raise RuntimeError(answer[len("error "):] if answer.startswith("error ")
                           else f"Server: the process hosting port {port} ended at its start")
    return int(answer[3:]), pid, stop_w


def _stop_store_process(pid, stop):
    try:
        os.write(stop, b"x")  # a byte, not end-of-file: forked ranks hold the pipe open too
    except OSError:  # the store's process has ended already
        pass
    os.close(stop)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # reaped already (a SIGCHLD handler of the program)
        pass


def join_server(master_ip: str, port: int, timeout: float):
    """A client store of the `Server` that holds ``port`` on this machine, or None when no
    live Server of this machine does (another program holds the port)."""
    try:
        with open(_marker(port)) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)  # raises when that process is gone (a stale marker)
    except (OSError, ValueError):
        return None
    import torch.distributed as dist

    return dist.TCPStore(master_ip, port, is_master=False,
                         timeout=datetime.timedelta(seconds=timeout))


def get_free_ports(num: int) -> List[int]:
    """``num`` distinct TCP ports that are free on this machine now (held together while they
    are picked, so they differ)."""
    if not isinstance(num, int) or isinstance(num, bool):
        raise ArgumentTypeError(f"get_free_ports: num must be an int >= 0, got "
                                f"{type(num).__name__} {num!r}")
    if num < 0:
        raise ValueError(f"get_free_ports: num must be an int >= 0, got {num!r}")
    sockets = []
    try:
        for _ in range(num):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_USER_PREFIX = "megengine/user/"  # keeps user keys apart from torch's own keys in the store


class Client:
    """Upstream's client of the rendezvous server, for the key-value pairs ranks share:
    ``user_set(key, value)`` publishes a small value (a shape, a dtype name, a flag),
    ``user_get(key)`` waits until some rank has set ``key`` and returns its value.

    ``Client(master_ip, port)`` connects to the rendezvous at that address, as upstream;
    ``megengine.distributed.get_client()`` gives the one of the current process group. The
    values live in the group's TCPStore (torch.distributed's rendezvous), written as XML-RPC
    writes them, so that they come back as from upstream's XML-RPC server: a tuple as a list,
    bytes as ``xmlrpc.client.Binary``.
    """

    def __init__(self, master_ip: str, port: int, timeout: float = 30):
        import torch.distributed as dist

        self._timeout = timeout
        self._store = dist.TCPStore(master_ip, port, is_master=False,
                                    timeout=datetime.timedelta(seconds=timeout))

    @classmethod
    def _over(cls, store, timeout):
        client = object.__new__(cls)
        client._store, client._timeout = store, timeout
        return client

    def user_set(self, key, val):
        """Publish ``val`` under ``key`` for every rank (a later set replaces it). ``val`` is
        what XML-RPC carries, as for upstream's server: None, bools, ints of 32 bits, floats,
        strs, bytes, and lists, tuples and str-keyed dicts of those."""
        try:
            data = xmlrpc.client.dumps((val,), allow_none=True)
        except (TypeError, OverflowError) as error:  # nothing is set
            raise type(error)(
                f"Client.user_set: the value for {key!r} cannot cross upstream's XML-RPC "
                f"rendezvous ({error}); give None, bools, ints of 32 bits, floats, strs, bytes, "
                f"or lists, tuples and str-keyed dicts of those (an array: .tolist(); any "
                f"object: pickle.dumps(obj), read back with pickle.loads(value.data))") from error
        try:  # a str with a control character XML cannot hold ("\x00"): upstream's server
            xmlrpc.client.loads(data)  # cannot read the request; here every user_get would fail
        except ExpatError as error:
            raise ValueError(
                f"Client.user_set: the value for {key!r} holds a str with a control character "
                f"that XML cannot carry, which upstream's XML-RPC rendezvous refuses ({error}); "
                f"send bytes instead (s.encode(), read back as value.data.decode()), or "
                f"pickle.dumps(obj)") from None
        self._store.set(_USER_PREFIX + str(key), data)

    def user_get(self, key):
        """The value some rank set under ``key``, waiting until one has, as upstream's XML-RPC
        server returns it: tuples come back as lists, bytes as ``xmlrpc.client.Binary`` (the
        bytes are its ``.data``; basecore's ``gather_pyobj`` reads ``user_get(key).data``)."""
        try:
            data = self._store.get(_USER_PREFIX + str(key))
        except RuntimeError as error:  # torch says "Socket Timeout" and nothing of the key
            raise RuntimeError(
                f"Client.user_get: no rank set {key!r} within {self._timeout:g} s (or the "
                f"rendezvous went away): {str(error).strip().splitlines()[0]}") from error
        return xmlrpc.client.loads(data.decode())[0][0]

    def user_pop(self, key):
        """``user_get(key)``, then the key is removed from the rendezvous (upstream's way to
        free a large value once its one reader has it)."""
        value = self.user_get(key)
        self._store.delete_key(_USER_PREFIX + str(key))
        return value
