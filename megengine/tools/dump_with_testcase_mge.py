"""``python3 -m megengine.tools.dump_with_testcase_mge model.mge -d "#rand(0,255)" -o
model_tc.mge``: add test cases to a dumped program: input data from files or random specs, run
through the program here, stored in the file with the outputs computed from them, so that
``load_network_and_run`` (or `megengine.utils.comp_graph_tools.load_and_inference`) reruns
them elsewhere and checks the outputs within ``--maxerr``.

Upstream inserts ``AssertEqual`` operators into its C++ graph; this fork's dump format keeps
test cases beside the program (what ``trace.dump(input_data=...)`` writes, see
``docs/api/network.rst``), so the program's operators are unchanged. Test cases the file held
are replaced. ``--optimize-for-inference`` takes upstream's ``--enable-*`` options (which, as
upstream's tool, need it): ``--enable-io16xc32`` / ``--enable-ioc16`` write the float16 program
(with test cases it computes); the layout and fusion passes change how upstream's kernels run,
not the values, and are accepted with a note. The other options of upstream's binary format
are refused.
"""
import os
import tempfile

import numpy as np

from ._common import (KERNEL_LAYOUTS, ToolError, add_optimizer, add_unsupported, converted,
                      float16_option, load_program, no_effect, optimizer_flags, print_out,
                      reject_unsupported, run_tool, tool_parser)

UNSUPPORTED = {
    "--enable-fuse-preprocess": (False, "this fusion is a pass of upstream's C++ graph "
                                        "optimizer, which this fork does not have"),
    "--resize-input": (False, "resizing images needs OpenCV, which this fork does not use; "
                              "resize them before giving them to --data"),
    "--discard-var-name": (False, "this fork's files always keep the names (upstream's binary "
                                  "format may drop them)"),
    "--output-strip-info": (False, "it lists the operators for a stripped MegEngine Lite "
                                   "build"),
}


def add_testcases(src, dst, data, repeat=1, silent=False, no_assert=False, maxerr=1e-4,
                  input_transform=None):
    """Write ``src`` (a dumped program) to ``dst`` with the test cases of ``data`` (a list of
    upstream's specs: ``"var:file;var2:#rand(0,1)"``, ``"@list.txt"``, ...; see
    `megengine.jit.dump_testcases.make_testcases`). Returns [(inputs, outputs)]."""
    from ..jit.dump import read_file, write_file
    from ..jit.dump_format import DumpError, _Writer
    from ..jit.dump_testcases import make_testcases

    program = load_program(src)._program
    try:  # (make_testcases reads @list files, and gives one random spec to every input)
        cases = make_testcases(program, list(data), repeat=repeat, input_transform=input_transform)
    except (DumpError, OSError) as e:
        raise ToolError(f"--data: {e}") from e
    graph, arrays = read_file(src)
    n = len(arrays)
    old = graph.pop("testcases", None) or {}
    old_ids = {i for c in old.get("cases", ()) for part in ("inputs", "outputs")
               for i in c[part].values()}
    if old_ids and old_ids == set(range(n - len(old_ids), n)):
        n -= len(old_ids)  # the old cases' arrays are the file's last: leave them out
    w = _Writer()
    # the arrays as the file holds them (a quantized array's scale lives in graph.json)
    w.arrays = [arrays[i].view(np.dtype(arrays[i].dtype.str)) for i in range(n)]
    w.qdtypes = graph.pop("quantized_arrays", [])
    graph["testcases"] = {
        "cases": [{"inputs": {k: w.array(v) for k, v in ins.items()},
                   "outputs": {k: w.array(v) for k, v in outs.items()}} for ins, outs in cases],
        "maxerr": float(maxerr), "no_assert": bool(no_assert), "silent": bool(silent)}
    write_file(graph, w, dst)
    return cases


def _describe(k, v):
    f = v.astype(np.float64) if v.size else np.zeros(1)
    return (f"{k}: shape={tuple(v.shape)} dtype={v.dtype} range=({f.min():.2f},{f.max():.2f}) "
            f"mean={f.mean():.2f} sd={f.std():.2f}")


def build_parser():
    parser = tool_parser("dump_with_testcase_mge",
                         "pack a dumped program, input values and the output values computed "
                         "from them into one file, for checking correctness elsewhere")
    parser.add_argument("input", help="the program dumped by megengine.jit.trace.dump")
    parser.add_argument("-o", "--output", required=True, help="the file to write")
    parser.add_argument("-d", "--data", action="append", required=True,
                        help="one test case: var0:spec0;var1:spec1 where spec is a .npy file, "
                             "a pickled array, an image (read as (1, C, H, W)) or "
                             "#rand(min,max[,shape...]) (a shape may end in '...', the rest of "
                             "the input's shape; no shape: the input's); the name may be left "
                             "out for a one-input program; @file reads one case per line. "
                             "Repeat for several cases")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repeat file data along the batch axis this many times (random "
                             "data is not repeated)")
    parser.add_argument("--silent", action="store_true",
                        help="store that a failed check should not print the values")
    parser.add_argument("--no-assert", action="store_true",
                        help="store the cases without asking for the outputs to be checked "
                             "(for benchmarking)")
    parser.add_argument("--maxerr", type=float, default=1e-4,
                        help="the largest difference the check allows")
    parser.add_argument("--input-transform",
                        help="a Python expression of `data` (and `np`) applied to each input, "
                             "e.g. 'data / np.std(data)'")
    add_optimizer(parser)
    add_unsupported(parser, UNSUPPORTED)
    return parser


def _run(args):
    reject_unsupported(args, UNSUPPORTED)
    if args.repeat < 1:
        raise ToolError(f"--repeat {args.repeat}: expected a number >= 1")
    given = optimizer_flags(args)
    if given and not args.optimize_for_inference:  # (upstream's tool asserts so too)
        raise ToolError(f"{given[0]} needs --optimize-for-inference, as upstream's "
                        "dump_with_testcase_mge: the --enable-* options act only with it")
    for flag in given:
        if flag in KERNEL_LAYOUTS:
            print_out(f"{flag} has no effect here: {no_effect(flag)}")
    option = float16_option(args)
    with tempfile.TemporaryDirectory() as tmp:
        src = args.input
        if option is not None:  # the float16 program, with test cases it computes (upstream)
            src = os.path.join(tmp, "float16.mge")
            with open(src, "wb") as f:
                f.write(converted(args.input, option).getvalue())
        cases = add_testcases(src, args.output, args.data, args.repeat, args.silent,
                              args.no_assert, args.maxerr, args.input_transform)
    for k, (ins, outs) in enumerate(cases):
        print_out(f"test case {k}:\n  " + "\n  ".join(
            [_describe(n, v) for n, v in sorted(ins.items())]
            + [_describe(n + " (expected)", v) for n, v in outs.items()]))
    print_out(f"{len(cases)} test case(s) written to {args.output}")
    return cases


def main(argv=None):
    """Run the tool on ``argv`` (default ``sys.argv[1:]``); returns [(inputs, outputs)]."""
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    main()
