"""``python3 -m megengine.tools.load_network_and_run model.mge``: run a dumped program (upstream's
Python load_and_run) on inputs from files, on random data or on the test cases the file stores,
``--iter`` times after ``--warm-up`` runs; print each run's time and a summary of the outputs,
check the stored test cases' outputs, and write a profile with ``--profile``.

The file is one `megengine.jit.trace.dump` wrote, or an upstream MegEngine ``.mge`` file
(`megengine.jit.upstream_mge`).
``--optimize-for-inference`` runs it through the inference optimizer with the ``--enable-*``
options, as upstream's tool (which ignores them without it): ``--enable-io16xc32`` /
``--enable-ioc16`` convert it to float16; the layout and fusion passes (``--enable-nchw44``,
...) change only how upstream's kernels run and are accepted with a note. ``--fast-run``,
``--reproducible`` and ``--weight-preprocess``, which choose among upstream's kernels for the
same values, are accepted with a note that they have nothing to do here. Other options of
upstream's C++ graph runtime (``--dump-cpp-model``, ``--embed-input``, ...) are refused with the
reason, never ignored.
"""
import io
import os
import shutil
import tempfile
import time
from collections import OrderedDict

import numpy as np

from ..jit.dump_testcases import parse_rand
from ._common import (KERNEL_LAYOUTS, ToolError, add_optimizer, add_unsupported, converted,
                      float16_option, format_table, load_network, load_program, no_effect,
                      optimizer_flags, positive_int, print_out, reject_unsupported, run_tool,
                      tool_parser)

# Upstream's options that only choose which MegDNN kernel computes the same values. Scripts pass
# them for speed (a deployment check's `load_network_and_run m.mge --fast-run --profile p.json`),
# so they are accepted; a note says there is nothing to choose here
SPEED_ONLY = {
    "--fast-run": "it times upstream's MegDNN algorithms to pick the fastest; this fork runs "
                  "each op on one kernel (ATen's for convolutions), so there is nothing to choose",
    "--reproducible": "it restricts upstream's MegDNN algorithm choice to deterministic ones; "
                      "this fork has no algorithm choice to restrict",
    "--weight-preprocess": "it preprocesses weights for upstream's winograd/im2col MegDNN "
                           "kernels, which this fork does not have",
}
UNSUPPORTED = {
    "--dump-cpp-model": (True, "it writes upstream's binary graph for MegEngine Lite's "
                               "load_and_run, a format this fork cannot write"),
    "--embed-input": (False, "it makes inputs SharedDeviceTensor operators of upstream's C++ "
                             "graph; here inputs are plain arrays given to each run"),
    "--get-static-mem-info": (True, "it reports upstream's static memory planner, which this "
                                    "fork does not have (arrays are numpy/CuPy arrays)"),
    "--custom-op-lib": (True, "it loads C++ custom operators built against upstream's runtime"),
    "--focused-nvprof": (False, "it brackets the last run for nvprof through pycuda; profile "
                                "with --profile (megengine.utils.profiler) instead"),
}

def build_parser():
    parser = tool_parser("load_network_and_run",
                         "load a network dumped by megengine.jit.trace.dump and run inference on "
                         "given data, random data or the test cases the file stores")
    parser.add_argument("net", help="the dumped program (trace.dump's file)")
    parser.add_argument("--device", "-d", help="run there, like 'cpu0', 'gpu0' or 'xpux' "
                        "(default: where each value was recorded, xpux as the default device)")
    parser.add_argument("--calc-output-rms", action="store_true",
                        help="print the RMS of each output after every run")
    parser.add_argument("--output-name", nargs="*",
                        help="the outputs to compute and show: output names of the file, or "
                             "names of other vars of the program")
    parser.add_argument("--input", action="append", default=[],
                        help="input data, as upstream's load_and_run: 'name:spec[;name:spec]' "
                             "where spec is a .npy file, a pickled array (.pkl), or "
                             "#rand(min,max[,shape...]) ('...' ends a shape with the rest of "
                             "the input's); the name may be left out for a one-input program, "
                             "and a pickled dict {name: array} gives several inputs. May be "
                             "given several times")
    parser.add_argument("--load-input-data",
                        help="a pickle file (mge.save / pickle) of an array (one-input "
                             "programs) or a dict {input name: array}")
    parser.add_argument("--profile", help="write the profile of the timed runs (a Chrome trace "
                        "of megengine.utils.profiler, for profile_analyze) to this file")
    parser.add_argument("--input-desc",
                        help="input shapes: <name>:<shape>[;<name>:<shape>...], shape comma "
                             "separated, e.g. 'data:128,1,28,28;label:128'")
    parser.add_argument("--batchsize", type=int,
                        help="change the batch size (the first dimension of each input)")
    parser.add_argument("--warm-up", type=positive_int, default=0,
                        help="runs before the timed ones")
    parser.add_argument("--iter", type=positive_int, default=1, help="timed runs")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the inputs and every output's values")
    parser.add_argument("--log", help="also write the log to this file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input data")
    parser.add_argument("--rng",
                        help="random data per input: <name>:func[;<name>:func...], func a "
                             "numpy RandomState method call with '{}' for the size, e.g. "
                             "'label:randint(low=0,high=1000,size={})'")
    parser.add_argument("--no-check-testcases", action="store_true",
                        help="run the file's stored test cases without comparing the outputs")
    add_optimizer(parser)
    speed = parser.add_argument_group("options of upstream's C++ runtime that only choose its "
                                      "kernels (accepted: nothing to do here)")
    for flag, reason in SPEED_ONLY.items():
        speed.add_argument(flag, action="store_true", help=f"accepted, no effect: {reason}")
    add_unsupported(parser, UNSUPPORTED)
    return parser


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _parse_pairs(desc, option, names):
    """[(name, value)] of 'name:value;name:value'; names must be inputs of the program."""
    pairs = []
    for part in desc.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition(":")
        if not sep:
            raise ToolError(f"{option} {part!r}: expected <name>:<value>")
        name = name.strip()
        if name not in names:
            raise ToolError(f"{option}: the program has no input named {name!r}; its inputs "
                            f"are {list(names)}")
        pairs.append((name, value.strip()))
    return pairs


def _load_pickle(path, option):
    from ..serialization import load

    if not os.path.isfile(path):
        raise ToolError(f"{option}: no such file {path!r}")
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    try:
        data = load(path)
    except Exception as e:  # noqa: BLE001 (whatever unpickling a foreign file raises)
        raise ToolError(f"{option}: {path!r} is neither a .npy file nor a pickled array or "
                        f"dict of arrays ({e})") from e
    return data


def _as_array(value, what):
    from ..core.tensor import Tensor

    if isinstance(value, Tensor):
        value = value.numpy()
    if not isinstance(value, np.ndarray):
        raise ToolError(f"{what} should be a numpy array, got {type(value).__name__}")
    return value


def _rand(spec, shape, rng, option):
    """The data of a '#rand(min, max[, shape...])' spec."""
    try:
        rand = parse_rand(spec, shape)
    except ValueError:
        rand = None
    if rand is None:
        raise ToolError(f"{option}: bad random spec {spec!r}; expected #rand(min, max) or "
                        "#rand(min, max, d0, d1, ...) (a shape may end in '...')")
    lo, hi, shape = rand
    return rng.uniform(lo, hi, size=shape)


def make_inputs(args, inputs):
    """{input name: array} for one run from the data options; ``inputs`` lists the program's
    (name, shape, dtype). Inputs no option names get uniform random data in [0, 1), as
    upstream."""
    names = [n for n, _, _ in inputs]
    shapes = OrderedDict((n, list(s)) for n, s, _ in inputs)
    dtypes = {n: d for n, _, d in inputs}
    rng = np.random.RandomState(args.seed)
    given = OrderedDict()
    if args.load_input_data:
        data = _load_pickle(args.load_input_data, "--load-input-data")
        if not isinstance(data, dict):
            if len(names) != 1:
                raise ToolError(f"--load-input-data: the file holds one array, but the program "
                                f"has the inputs {names}; save a dict {{name: array}}")
            data = {names[0]: data}
        for k, v in data.items():
            if k not in shapes:
                raise ToolError(f"--load-input-data: the program has no input named {k!r}; its "
                                f"inputs are {names}")
            given[k] = _as_array(v, f"--load-input-data: entry {k!r}")
        if args.batchsize:
            for k, v in list(given.items()):
                if args.batchsize % v.shape[0]:
                    raise ToolError(f"--batchsize {args.batchsize} is not a multiple of the "
                                    f"batch {v.shape[0]} of input {k!r} in --load-input-data")
                given[k] = np.repeat(v, args.batchsize // v.shape[0], axis=0)
    for name, shape in _parse_pairs(args.input_desc or "", "--input-desc", names):
        try:
            shapes[name] = [int(d) for d in shape.split(",")]
        except ValueError:
            raise ToolError(f"--input-desc: bad shape {shape!r} for {name!r}; expected "
                            "comma-separated whole numbers") from None
    if args.batchsize:
        for s in shapes.values():
            if s:
                s[0] = args.batchsize
    for item in args.input:
        for part in item.split(";"):
            part = part.strip()
            if not part:
                continue
            name, sep, spec = ("", "", part) if part.startswith("#") else part.partition(":")
            if not sep:
                name, spec = "", part
                if spec.startswith("#") or spec.endswith(".npy") or len(names) == 1:
                    if len(names) != 1:
                        raise ToolError(f"--input {part!r} names no input, but the program "
                                        f"has the inputs {names}; write name:{part}")
                    name = names[0]
            name = name.strip()
            if name and name not in shapes:
                raise ToolError(f"--input: the program has no input named {name!r}; its inputs "
                                f"are {names}")
            if spec.startswith("#"):
                given[name] = _rand(spec, shapes[name], rng, "--input")
                continue
            data = _load_pickle(spec, "--input")
            if isinstance(data, dict) and not name:
                for k, v in data.items():
                    if k not in shapes:
                        raise ToolError(f"--input {spec!r}: the program has no input named "
                                        f"{k!r}; its inputs are {names}")
                    given[k] = _as_array(v, f"--input {spec!r}: entry {k!r}")
            elif not name:
                raise ToolError(f"--input {spec!r} holds one array, but the program has the "
                                f"inputs {names}; write name:{spec}")
            else:
                given[name] = _as_array(data, f"--input {spec!r}")
    rngs = dict(_parse_pairs(args.rng or "", "--rng", names))
    feeds = OrderedDict()
    for name in names:
        if name in given:
            value = given[name]
        elif name in rngs:
            try:
                value = eval(f"rng.{rngs[name]}".format(tuple(shapes[name])), {"rng": rng})
            except Exception as e:  # noqa: BLE001 (the user's expression)
                raise ToolError(f"--rng {name}:{rngs[name]}: {type(e).__name__}: {e}") from e
        else:
            value = rng.uniform(size=shapes[name])
        feeds[name] = np.ascontiguousarray(np.asarray(value).astype(dtypes[name], copy=False))
    return feeds


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
def _select_outputs(args, graph):
    """(GraphInference, output names) for ``--output-name``: the file's outputs by name, other
    vars through `megengine.utils.network.Network` (the program dumped again with them as its
    outputs)."""
    from ..utils.comp_graph_tools import GraphInference

    option = float16_option(args)
    wanted = list(args.output_name or graph.output_names)
    if all(n in graph.output_names for n in wanted):
        if option is None:
            return graph, wanted
        # --enable-io16xc32 / --enable-ioc16: the program converted to float16, on the file's
        # test cases (checked within their maxerr, as upstream's float16 graph is)
        new = GraphInference(converted(args.net, option), device=args.device)
        new._program.testcases = graph._program.testcases
        new._program.testcase_options = graph._program.testcase_options
        return new, wanted
    known = {v.name for v in load_network(args.net).all_vars}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ToolError(f"--output-name: the program has no outputs or vars named {unknown}; "
                        f"its outputs are {graph.output_names} (draw_graph or "
                        "network_visualize list the other vars)")
    return GraphInference(converted(args.net, option, wanted), device=args.device), wanted


def _run_once(program, feeds, names, traced):
    """{output name: host array} of one run; a shape other than the traced one runs the recorded
    ops at that shape (an error then says so)."""
    reshaped = any(tuple(v.shape) != traced[n] for n, v in feeds.items())
    try:
        values = program.run(feeds, strict_shape=not reshaped)
    except Exception as e:
        if not reshaped:
            raise
        got = {n: tuple(v.shape) for n, v in feeds.items()}
        raise ToolError(f"the program was traced with the input shapes {traced}; its recorded "
                        f"ops cannot run at {got} ({type(e).__name__}: {e}). Trace and dump it "
                        "at the new shape") from e
    return OrderedDict((n, np.asarray(values[n].numpy())) for n in names)


def _summary(outputs):
    rows = []
    for name, v in outputs.items():
        f = v.astype(np.float64) if v.size else np.zeros(1)
        rows.append([name, tuple(v.shape), v.dtype, f"{f.min():.6g}", f"{f.max():.6g}",
                     f"{f.mean():.6g}", f"{np.sqrt((f ** 2).mean()):.6g}"])
    return format_table(rows, ["output", "shape", "dtype", "min", "max", "mean", "rms"])


def _check_case(k, outputs, expected, options):
    """Compare one run's outputs with test case ``k``'s stored ones, as load_and_inference."""
    maxerr = options.get("maxerr", 1e-4)
    worst = 0.0
    for name, want in expected.items():
        if name not in outputs:
            continue
        got = outputs[name]
        if got.shape != want.shape:
            raise ToolError(f"test case {k}: output {name!r} has shape {got.shape}, the stored "
                            f"one {want.shape}")
        err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)),
                           initial=0.0))
        if not err <= maxerr:
            raise ToolError(f"test case {k}: output {name!r} differs from the stored one by "
                            f"{err:.6g} (maxerr {maxerr})")
        worst = max(worst, err)
    return worst


def run(args):
    from ..device import get_default_device, set_default_device

    previous = get_default_device()
    try:
        return _run(args)
    finally:  # main() called in-process (a script, a test) leaves the default device as it was
        set_default_device(previous)


def _optimizer_notes(args, logger):
    """Log what the --enable-* options do here: nothing without --optimize-for-inference (as
    upstream's tool, which applies them only with it); with it, the float16 ones convert the
    program and the others change only how upstream's kernels would run."""
    for flag in optimizer_flags(args):
        if not args.optimize_for_inference:
            logger.warning("%s has no effect without --optimize-for-inference (as upstream's "
                           "load_network_and_run)", flag)
        elif flag in KERNEL_LAYOUTS:
            logger.info("%s has no effect here: %s", flag, no_effect(flag))


def _run(args):
    reject_unsupported(args, UNSUPPORTED)
    from ..logger import enable_debug_log, get_logger, set_log_file

    logger = get_logger(__name__)
    if args.verbose:
        enable_debug_log()
    if args.log:
        set_log_file(args.log)
    for flag, reason in SPEED_ONLY.items():
        if getattr(args, flag.lstrip("-").replace("-", "_")):
            logger.info("%s has no effect here: %s", flag, reason)
    _optimizer_notes(args, logger)
    if args.device:
        from ..device import canonical_device, set_default_device

        try:
            canonical_device(args.device)
        except Exception as e:  # noqa: BLE001 (a name this machine cannot serve)
            raise ToolError(f"--device {args.device!r}: {e}") from e
        set_default_device(args.device)
    graph = load_program(args.net, device=args.device)
    graph, out_names = _select_outputs(args, graph)
    program = graph._program
    traced = {n: tuple(s) for n, s, _ in program.inputs}
    data_given = bool(args.input or args.load_input_data or args.input_desc or args.rng
                      or args.batchsize)
    if program.testcases and not data_given:
        cases = [(dict(i), e) for i, e in program.testcases]
        check = not (args.no_check_testcases or program.testcase_options.get("no_assert"))
        print_out(f"running the {len(cases)} test case(s) stored in {args.net}"
                  + ("" if check else " (outputs not checked)"))
    else:
        cases = [(make_inputs(args, program.inputs), None)]
        check = False
    for k, (feeds, _) in enumerate(cases):
        shapes = ", ".join(f"{n}: {tuple(v.shape)} {v.dtype}" for n, v in feeds.items())
        print_out(f"input tensors{f' (test case {k})' if len(cases) > 1 else ''}: {shapes}")
        if args.verbose:
            for n, v in feeds.items():
                print_out(f"  {n} = {np.array2string(v, threshold=20)}")

    profiler = None
    if args.profile:
        from ..utils.profiler import Profiler

        profile_dir = tempfile.mkdtemp(prefix="mge_profile_")
        profiler = Profiler(profile_dir)
    total_time = 0.0
    outputs = None
    try:
        for k, (feeds, _) in enumerate(cases):
            for i in range(args.warm_up):
                logger.debug(f"warming up {i}")
                _run_once(program, feeds, out_names, traced)
        if profiler is not None:
            profiler.start()
        try:
            for k, (feeds, expected) in enumerate(cases):
                for i in range(args.iter):
                    start = time.perf_counter()
                    outputs = _run_once(program, feeds, out_names, traced)
                    cur = time.perf_counter() - start
                    total_time += cur
                    n_runs = k * args.iter + i + 1
                    speed = n_runs / total_time if total_time else float("inf")
                    if "data" in feeds and feeds["data"].ndim:
                        speed_txt = f"{speed * feeds['data'].shape[0]:.3f}sample/s"
                    else:
                        speed_txt = f"{speed:.3f}batch/s"
                    msg = (f"iter {i}: duration={cur:.4f}s average={total_time / n_runs:.4f}s "
                           f"avg_speed={speed_txt} time={total_time:.4f}s")
                    if len(cases) > 1:
                        msg = f"test case {k} " + msg
                    if args.calc_output_rms:
                        rms = [f"{float(np.sqrt((v.astype(np.float64) ** 2).mean())):.3g}"
                               for v in outputs.values()]
                        msg += f" output_rms=[{', '.join(rms)}]"
                    print_out(msg)
                if check:
                    if args.iter == 0:  # nothing timed: the check still runs the case once
                        outputs = _run_once(program, feeds, out_names, traced)
                    err = _check_case(k, outputs, expected, program.testcase_options)
                    print_out(f"test case {k}: outputs match the stored ones (max error "
                              f"{err:.3g}, maxerr "
                              f"{program.testcase_options.get('maxerr', 1e-4)})")
        finally:
            if profiler is not None:
                profiler.stop()
        if profiler is not None:
            import json

            with open(args.profile, "w", encoding="utf-8") as f:
                json.dump({"traceEvents": profiler.trace_events(), "displayTimeUnit": "ms"}, f)
            print_out(f"profile written to {args.profile}")
    finally:
        if profiler is not None:
            shutil.rmtree(profile_dir, ignore_errors=True)
    if outputs is not None:
        print_out(_summary(outputs))
        if args.verbose:
            for n, v in outputs.items():
                print_out(f"  {n} = {np.array2string(v, threshold=20)}")
    return outputs


def main(argv=None):
    """Run the tool on ``argv`` (default ``sys.argv[1:]``); returns the last run's outputs
    ({name: array}) when called in-process."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    main()
