"""Programs run step by step on this checkout and on upstream MegEngine 1.13, and their results
compared: the runner that tests/fuzz/upstream_modules.py, upstream_tensors.py and
upstream_optim.py share.

A program is ``(build source, [step sources])``, run after a prelude (the fuzzer's helpers) in
a fresh namespace; each step leaves what it computed in ``out``. Its results are ``["ok",
value]`` (the value as JSON-able lists, numbers and strings) or ``["raise", error type,
message, the type's bases]`` for the build and each step. Upstream's interpreter runs this file
by path (``--serve``: prelude and programs as JSON on stdin, results on stdout), so it imports
only numpy and the standard library at its top.

`compare` walks two programs' results: the first value that differs, a step that raises here
only, or both raising where this side's error is not of upstream's type too (an ``except``
written for upstream would miss it), is a finding; what upstream alone refuses, and what both
refuse alike, is counted. A fuzzer's
``rule`` may decide a step first (a documented difference): count it, count it and stop
comparing (the two states differ from there), or make it a finding."""
import json
import sys

import numpy as np


def digest(value):
    """A short stand-in for a JSON-able value (records hold these instead of the values)."""
    import hashlib

    return "#sha1:" + hashlib.sha1(json.dumps(value).encode()).hexdigest()[:16]


def close(a, b, tol):
    """Whether two JSON-able values agree, numbers within ``tol`` = (rtol, atol); ``b`` may
    hold digests of parts of ``a`` (`digest`: a record keeps long texts so)."""
    if isinstance(b, str) and b.startswith("#sha1:") and a != b:
        return digest(a) == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol[1] + tol[0] * max(abs(a), abs(b))
    return a == b


def same(m, t, tol=None):
    """Whether two "ok" results hold one value (``t``'s may be a record's digest of it; numbers
    within ``tol`` = (rtol, atol) where given)."""
    if m[0] != "ok" or t[0] != "ok":
        return False
    return close(m[1], t[1], tol or (0.0, 0.0))


def plain(v):
    """``v`` as JSON-able lists, numbers and strings."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return [[plain(k), plain(x)] for k, x in v.items()]
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else repr(v)
    return repr(v)


class QuietLogs:
    """Both engines log renames and unused keys (as upstream); not while the programs run."""

    def __enter__(self):
        import logging

        logging.disable(logging.CRITICAL)

    def __exit__(self, *exc):
        import logging

        logging.disable(logging.NOTSET)


# Prelude source of fuzzers that compare float32 values across the engines: ``r(a)``, ``a``'s
# values (an array, a number) as nested lists rounded to 5 significant digits, where the two
# engines' float32 sums, in their own orders, may part in the last.
ROUND = '''
def r(a):
    """Values rounded to 5 significant digits (the engines' float32 sums may part in the last)."""
    return np.vectorize(lambda v: float("%.5g" % v))(np.asarray(a, "float64")).tolist()
'''

# Prelude source of fuzzers whose programs save objects: ``saved_twin(obj)`` is ``obj`` through
# mge.save and mge.load, in memory, or, where the fuzzer shares a folder (`Fuzzer`'s
# ``shared_folder``: MGE_FUZZ_PICKLES), through upstream's file: its side writes
# (MGE_FUZZ_WRITER), this side loads what upstream wrote.
SAVED_TWIN = '''
def saved_twin(obj):
    import io
    import os
    folder = os.environ.get("MGE_FUZZ_PICKLES")
    if not folder:
        f = io.BytesIO()
        mge.save(obj, f)
        f.seek(0)
        return mge.load(f)
    SAVED[0] += 1
    path = os.path.join(folder, f"{TAG}_{SAVED[0]}.pkl")
    if os.environ.get("MGE_FUZZ_WRITER"):
        mge.save(obj, path)
    return mge.load(path)


SAVED = [0]
'''


class Timeout(Exception):
    """A program ran past its time (`run`)."""


def run(program, prelude, seconds=30):
    """The results of ``program`` here (after ``prelude``), stopping after the build if it
    raised, and after a step that ran past ``seconds`` in all (that step raises `Timeout`; a
    fuzzing process goes on to its next program). ``TAG`` names the program in its namespace
    (the same on both sides)."""
    import signal
    import warnings

    def alarm(signum, frame):
        raise Timeout(f"the program ran past {seconds} s")

    build, steps = program
    ns = {"__name__": "fuzzed_program", "TAG": digest(list(program))[6:18]}
    results = []
    handler = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, source in enumerate([prelude + build] + list(steps)):
                ns["out"] = None
                try:
                    exec(compile(source, f"<step {i}>", "exec"), ns)
                    results.append(["ok", plain(ns["out"])])
                except Exception as e:  # noqa: BLE001  (an error is a result to compare)
                    results.append(["raise", type(e).__name__, str(e)[:200],
                                    [c.__name__ for c in type(e).__mro__]])
                    if i == 0 or isinstance(e, Timeout):
                        break
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, handler)
        # (the prelude's functions hold the namespace as their globals, a cycle: cleared, what
        # the program made goes now, a DataLoader's worker processes with it, not at some
        # later garbage collection)
        ns.clear()
    return results


def run_all(programs, prelude):
    with QuietLogs():
        return [run(p, prelude) for p in programs]


def serve():
    """Each program's results as one line of JSON, as it ends. Each program runs in a child
    process forked from this one, which imported megengine but made no tensor (upstream 1.13
    refuses to run in a child of a process that used it): no program sees another's global
    state (an upstream optimizer step that raises leaves its input conversion off for the
    rest of the process), and a crash costs that program only."""
    job = json.loads(sys.stdin.read())
    for name in ("megengine", "megengine.functional", "megengine.module", "megengine.optimizer",
                 "megengine.autodiff", "megengine.quantization", "megengine.jit",
                 "megengine.traced_module"):
        __import__(name)  # (once, here: the children share it)
    for program in job["programs"]:
        print("RESULT " + json.dumps(_run_in_child(program, job["prelude"])), flush=True)


def _run_in_child(program, prelude):
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, hand the results over, leave without cleaning up
        os.close(read)
        try:
            data = json.dumps(run_all([program], prelude)[0])
        except BaseException as e:  # noqa: BLE001  (a timeout's alarm, say)
            data = json.dumps([["raise", "crash", repr(e)[:200], ["crash"]]])
        with os.fdopen(write, "w") as f:
            f.write(data)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if data:
        return json.loads(data)
    return [["raise", "crash", f"exit status {os.waitstatus_to_exitcode(status)}", ["crash"]]]


def upstream_results(python, programs, prelude, cwd=None, env=None):
    """The results of ``programs`` in ``python`` (this file run by path from ``cwd``, by default
    a temporary directory, without PYTHONPATH, which names this checkout). A program that
    crashes its child process gets ``["raise", "crash", ...]`` for its build (`serve`)."""
    import os
    import subprocess
    import tempfile

    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    job = json.dumps({"prelude": prelude, "programs": programs})
    out = subprocess.run([python, os.path.abspath(__file__), "--serve"], input=job,
                         capture_output=True, text=True, cwd=cwd or tempfile.gettempdir(),
                         env=env)
    results = [json.loads(line[7:]) for line in out.stdout.splitlines()
               if line.startswith("RESULT ")]
    if len(results) != len(programs):
        raise RuntimeError(f"upstream's run failed: {out.stderr[-2000:]}")
    return results


# upstream errors whose type is an accident of its code, not a choice a program relies on: a
# missing attribute or name, an unbound local, OpenCV's own `cv2.error`; and a feature
# upstream lacks (NotImplementedError), whose program fails here later for another cause or not
ACCIDENTAL_ERRORS = frozenset({"AttributeError", "NameError", "UnboundLocalError", "error",
                               "NotImplementedError"})


def error_types_agree(theirs, bases, accidental=ACCIDENTAL_ERRORS):
    """Whether an ``except`` written for upstream's error type ``theirs`` catches this side's
    error (the names of its type's bases), or upstream's type is in ``accidental``. Upstream's
    AsyncError is a RuntimeError (its kernels' failures, reported later)."""
    return theirs in bases or theirs in accidental or \
        (theirs == "AsyncError" and "RuntimeError" in bases)


def compare(program, mine, theirs, rule=None, tol=None):
    """(index of the first differing result or None, what differs, Counter of step outcomes)
    of one program's results on both sides. Two errors are alike where upstream's type is a
    base of this fork's (a LoadStateDictError is a KeyError and a ValueError; upstream's
    AsyncError is a RuntimeError), or upstream's is an accident of its code
    (`ACCIDENTAL_ERRORS`); other pairs are a finding. ``rule(sources,
    i, mine, theirs)`` sees each step first: None, or ("count", label), ("stop", label) (count
    it and compare no further) or ("finding", what); ``sources`` are the program's build and
    steps."""
    import collections

    counts = collections.Counter()
    sources = [program[0]] + list(program[1])
    for i, (m, t) in enumerate(zip(mine, theirs)):
        where = "build" if i == 0 else f"step {i}"
        verdict = rule(sources, i, mine, theirs) if rule else None
        if verdict:
            action, label = verdict
            if action == "finding":
                return i, f"{where}: {label}", counts
            counts[label] += 1
            if action == "stop":
                return None, None, counts
            continue
        if m[0] == "ok" and t[0] == "ok":
            if not same(m, t, tol):
                return i, f"{where}: values differ", counts
            counts["same"] += 1
        elif m[0] == "raise" and t[0] == "raise":
            if error_types_agree(t[1], m[3]):
                counts["both raise"] += 1
            else:  # (an `except` written for upstream's error would miss this side's)
                return i, f"{where}: an error of another type: here {m[1]} {m[3][1:-2]}, " \
                          f"upstream {t[1]}", counts
        elif m[0] == "ok":
            counts["upstream raises"] += 1
            return None, None, counts  # (the states now differ: the rest is not compared)
        else:
            return i, f"{where}: raises here only", counts
    return None, None, counts


def first_apart(a, b):
    """The first place where two results part (a path of list indices), or None."""
    if not (isinstance(a, list) and isinstance(b, list)) or a == b:
        return None if a == b else []
    for j, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return [j] + (first_apart(x, y) or [])
    return [min(len(a), len(b))]


def show_diff(program, i, mine, theirs, show):
    show("  " + (["(build)"] + list(program[1]))[i].replace("\n", "\n  "))
    m, t = mine[i][:3], theirs[i][:3]
    path = first_apart(m, t) or []
    for j in path[:-1]:  # (down to the list holding the first difference)
        m, t = m[j], t[j]
    if path:
        show(f"    where they part: {path}")
    show(f"    here:     {json.dumps(m)[:600]}")
    show(f"    upstream: {json.dumps(t)[:600]}")


def compare_all(seeds, programs, theirs, prelude, rule=None, show=print, tol=None):
    """Run ``programs`` here and compare with ``theirs`` (upstream's results): (findings, a
    Counter of step outcomes), each finding shown."""
    import collections

    total, bad = collections.Counter(), 0
    for seed, program, t in zip(seeds, programs, theirs):
        m = run_all([program], prelude)[0]
        i, finding, counts = compare(program, m, t, rule, tol)
        total.update(counts)
        if finding:
            bad += 1
            show(f"=== seed {seed}: {finding}")
            show_diff(program, i, m, t, show)
    return bad, total


# ----- a record of upstream's results (CI compares this checkout with it) -----

def save_record(path, seeds, programs, results, keep=lambda source: False):
    """Upstream's results, short: errors with their messages' first 80 characters (only the
    types are compared; a rule may read the message to tell an error of another cause),
    values as digests but those of steps ``keep`` names (a rule reads them, or numbers are
    compared within a tolerance; where ``keep`` gives a function, the value it makes of the
    whole: long texts as digests, say), each program as the digest of its source (the seed
    draws it again)."""
    def short(source, r):
        if r[0] == "raise":
            return r[:2] + [str(r[2])[:80], r[3]]
        kept = keep(source)
        if callable(kept):
            return ["ok", kept(r[1])]
        return r if kept else ["ok", digest(r[1])]

    results = [[short(src, r) for src, r in zip(["(build)"] + list(p[1]), rs)]
               for p, rs in zip(programs, results)]
    with open(path, "w") as f:
        json.dump({"upstream": "MegEngine 1.13.0 (python3.10, CPU)", "seeds": seeds,
                   "programs": [digest(list(p)) for p in programs], "results": results}, f,
                  separators=(",", ":"))
        f.write("\n")


def load_record(path, draw, command):
    """(seeds, programs, upstream's results) of a record; the programs are drawn again and
    must be the ones recorded (a changed generator needs a new record: ``command``)."""
    with open(path) as f:
        data = json.load(f)
    programs = [draw(s) for s in data["seeds"]]
    if [digest(list(p)) for p in programs] != data["programs"]:
        raise ValueError(f"{path} was recorded from other programs than draw() makes now: "
                         f"record it again ({command} --upstream PYTHON --seeds N --record FILE)")
    return data["seeds"], programs, data["results"]


# ----- a fuzzer's command line -----

class Fuzzer:
    """What a fuzzer of programs gives `fuzz` and `main`: ``draw(seed)``, its ``prelude``, its
    ``rule`` (documented differences), ``keep`` (steps whose values a record keeps whole: a rule
    reads them), ``tol`` (numbers compared within (rtol, atol)), ``shared_folder`` (upstream's
    side saves files there, named in MGE_FUZZ_PICKLES, with MGE_FUZZ_WRITER set, that this side
    loads) and ``command`` (how to run it)."""

    def __init__(self, command, draw, prelude, rule=None, keep=lambda source: False, tol=None,
                 shared_folder=False):
        self.command, self.draw, self.prelude, self.rule = command, draw, prelude, rule
        self.keep, self.tol, self.shared_folder = keep, tol, shared_folder

    def load_record(self, path):
        return load_record(path, self.draw, self.command)

    def compare_all(self, seeds, programs, theirs, show=print):
        return compare_all(seeds, programs, theirs, self.prelude, self.rule, show, self.tol)

    def replay(self, path):
        """This checkout against a record: (how many programs, the findings as shown, a
        Counter of step outcomes)."""
        seeds, programs, theirs = self.load_record(path)
        shown = []
        _, outcomes = self.compare_all(seeds, programs, theirs, shown.append)
        return len(programs), shown, outcomes

    def fuzz(self, seeds, start, upstream=None, record=None, show=print):
        """Seeds ``start`` ... run here, and against ``upstream``'s interpreter where given:
        (findings, a Counter of outcomes). Without upstream a finding is a build that raises."""
        import collections
        import os
        import tempfile

        seed_list = list(range(start, start + seeds))
        programs = [self.draw(s) for s in seed_list]
        if upstream is None:
            mine = run_all(programs, self.prelude)
            bad = [s for s, r in zip(seed_list, mine) if r[0][0] != "ok"]
            for s in bad:
                show(f"=== seed {s}: the build raises: {mine[s - start][0]}")
            return len(bad), collections.Counter(r[0][0] for r in mine)
        with tempfile.TemporaryDirectory() as folder:
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            if self.shared_folder:
                env.update(MGE_FUZZ_PICKLES=folder, MGE_FUZZ_WRITER="1")
            theirs = upstream_results(upstream, programs, self.prelude, env=env)
            if record:
                save_record(record, seed_list, programs, theirs, self.keep)
            if self.shared_folder:
                os.environ["MGE_FUZZ_PICKLES"] = folder
            try:
                return self.compare_all(seed_list, programs, theirs, show)
            finally:
                os.environ.pop("MGE_FUZZ_PICKLES", None)

    def main(self, argv, doc):
        import argparse

        parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
        parser.add_argument("--seeds", type=int, default=100)
        parser.add_argument("--start", type=int, default=0)
        parser.add_argument("--upstream", metavar="PYTHON",
                            help="an interpreter with upstream MegEngine 1.13 installed")
        parser.add_argument("--record", metavar="FILE",
                            help="with --upstream: also write upstream's results to FILE (JSON)")
        parser.add_argument("--show", type=int, metavar="SEED", help="print seed SEED's program")
        args = parser.parse_args(argv)
        if args.show is not None:
            build, steps = self.draw(args.show)
            print(build)
            for i, step in enumerate(steps, 1):
                print(f"# --- step {i}\n{step}")
            return 0
        bad, counts = self.fuzz(args.seeds, args.start, args.upstream, args.record)
        print(f"{args.seeds} programs from {args.start}: {bad} findings; steps: {dict(counts)}")
        return 1 if bad else 0


if __name__ == "__main__" and "--serve" in sys.argv:
    serve()  # (upstream's interpreter: by path, no package around it)
