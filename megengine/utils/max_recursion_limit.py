"""`max_recursion_limit()`: a reentrant ``with`` block in which Python's recursion limit (and,
where the OS allows, the soft stack size limit) are raised to their maxima, for deep graphs
(pickling long chains, recursive model walks)."""
import sys
import threading

try:
    import resource  # POSIX only
except ImportError:  # Windows: only Python's limit is raised
    resource = None

__all__ = ["AlternativeRecursionLimit", "max_recursion_limit"]


class AlternativeRecursionLimit:
    """Sets Python's recursion limit to ``new_py_limit`` while inside; nested and concurrent
    entries share one raise (a counter), and the last exit restores the original limits."""

    def __init__(self, new_py_limit):
        self.new_py_limit = new_py_limit
        self.count = 0
        self.lock = threading.Lock()
        self.orig_py_limit = 0
        self.orig_stack = None

    def __enter__(self):
        with self.lock:
            if self.count == 0:
                self.orig_py_limit = sys.getrecursionlimit()
                if resource is not None:
                    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
                    self.orig_stack = (soft, hard)
                    try:  # a deeper Python stack needs a larger C stack
                        resource.setrlimit(resource.RLIMIT_STACK, (hard, hard))
                    except (ValueError, OSError):
                        self.orig_stack = None  # not allowed here (macOS): keep the OS limit
                sys.setrecursionlimit(self.new_py_limit)
            self.count += 1
        return self

    def __exit__(self, *exc):
        with self.lock:
            self.count -= 1
            if self.count == 0:
                sys.setrecursionlimit(self.orig_py_limit)
                if self.orig_stack is not None:
                    try:
                        resource.setrlimit(resource.RLIMIT_STACK, self.orig_stack)
                    except (ValueError, OSError):
                        pass  # the limit we set stays; nothing depends on lowering it again
        return False


# CPython rejects limits above what fits a C int; this is the largest it takes on all platforms
_max_recursion_limit_context_manager = AlternativeRecursionLimit(2 ** 31 - 1)


def max_recursion_limit():
    """The shared context manager that raises the recursion limit to the maximum."""
    return _max_recursion_limit_context_manager
