"""``python3 -m megengine.tools.profiler [options] train.py args...``: run a Python script (or,
with ``-m``, a module) under `megengine.utils.profiler.Profiler` and write its profile
(``<output>/<pid>.chrome_timeline.json`` by default; open it in https://ui.perfetto.dev or read
it with ``profile_analyze``).

The profiler's options go before the script; everything after the script's name is the
script's own command line (upstream picks its options out of the whole line, so a script option
named like one of them was taken by the profiler).
"""
import argparse
import os
import runpy
import sys

from ._common import ToolError, print_out, run_tool


def build_parser():
    from ..utils.profiler import Profiler

    parser = argparse.ArgumentParser(
        prog="python3 -m megengine.tools.profiler",
        description="profile a megengine program: run it under megengine.utils.profiler")
    parser.add_argument("-m", "--module", action="store_true",
                        help="the program is a module name (as python -m), not a file")
    parser.add_argument("-o", "--output", default="profile",
                        help="the directory the profile goes to")
    parser.add_argument("-f", "--format", action="append", choices=sorted(Profiler.valid_formats),
                        help="output format (repeatable; default chrome_timeline.json)")
    parser.add_argument("--merge_trace_events", action="store_true",
                        help="merge the directory's per-process traces into "
                             "merge.chrome_timeline.json afterwards")
    parser.add_argument("--clean", action="store_true",
                        help="delete the directory's earlier profiles first")
    for opt in sorted(Profiler.valid_options):
        parser.add_argument("--" + opt, type=int, default=None,
                            help="Profiler's option of that name")
    parser.add_argument("program", nargs="?", help="the script (or module with -m) to run")
    parser.add_argument("program_args", nargs=argparse.REMAINDER,
                        help="the program's own arguments")
    return parser


def _run(args):
    from ..utils.profiler import Profiler, merge_trace_events

    options = {opt: getattr(args, opt) for opt in Profiler.valid_options
               if getattr(args, opt) is not None}
    if args.clean and os.path.isdir(args.output):
        for name in os.listdir(args.output):
            if name.endswith((".chrome_timeline.json", ".memory_flow.svg")):
                os.remove(os.path.join(args.output, name))
    if args.program is None:
        if not args.merge_trace_events:
            raise ToolError("give the script to profile (or --merge_trace_events alone to "
                            "merge the profiles in --output)")
    else:
        target = args.program
        if not args.module:
            if not os.path.isfile(target):
                raise ToolError(f"cannot find the script {target!r}")
            target = os.path.realpath(target)
        saved_argv, saved_path = sys.argv[:], sys.path[:]
        sys.argv[:] = [target, *args.program_args]
        if not args.module:  # the script's directory first on the path, as `python script.py`
            sys.path.insert(0, os.path.dirname(target))
        profiler = Profiler(args.output, formats=args.format, **options)
        try:
            with profiler:
                if args.module:
                    runpy.run_module(target, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(target, run_name="__main__")
        finally:
            sys.argv[:], sys.path[:] = saved_argv, saved_path
            for fmt in profiler.formats:
                print_out("profile written to "
                          + profiler.format_path(profiler.directory, os.getpid(), fmt))
    if args.merge_trace_events:
        try:
            print_out("merged into " + merge_trace_events(args.output))
        except FileNotFoundError as e:
            raise ToolError(str(e)) from e
    return args.output


def main(argv=None):
    """Run the tool on ``argv`` (default ``sys.argv[1:]``); returns the profile directory."""
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    main()
