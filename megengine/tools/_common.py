"""What the command-line tools share: reading a dumped program with errors a user can act on
(`ToolError`), a tool's argument parser (`tool_parser`), running a tool's body so that those
errors end the command the way argparse ends it (`run_tool`), options that only mean something
to upstream's C++ runtime (`add_unsupported`), and plain-text tables (`format_table`)."""
import argparse
import io
import os
import sys

__all__ = ["ToolError", "tool_parser", "run_tool", "load_program", "load_network",
           "add_unsupported", "reject_unsupported", "format_table", "print_out", "positive_int"]


class ToolError(Exception):
    """A problem with what the user gave a tool (a file, an option's value); its message says
    what was wrong and what to do. `run_tool` prints it as argparse prints usage errors."""


def tool_parser(name, description):
    """The argument parser of ``python3 -m megengine.tools.<name>``, its ``--help`` showing
    each option's default."""
    return argparse.ArgumentParser(prog=f"python3 -m megengine.tools.{name}",
                                   description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def run_tool(parser, body, argv):
    """Parse ``argv`` with ``parser`` and run ``body(args)``; a `ToolError` ends the command as
    argparse ends it on a bad option (the message on stderr, exit status 2)."""
    args = parser.parse_args(argv)
    try:
        return body(args)
    except ToolError as e:
        parser.error(str(e))


def _check_path(path, what="model"):
    if not os.path.exists(path):
        raise ToolError(f"no such {what} file: {path!r}")
    if os.path.isdir(path):
        raise ToolError(f"{path!r} is a directory; give the {what} file that "
                        "megengine.jit.trace.dump wrote")


def _readable(e, path):
    """The load error of ``path`` as a ToolError (an upstream .mge, a corrupt file...)."""
    return ToolError(f"cannot read {path!r}: {e}")


def load_program(path, device=None):
    """A `megengine.utils.comp_graph_tools.GraphInference` of the dumped file ``path``."""
    from ..utils.comp_graph_tools import GraphInference

    _check_path(path)
    try:
        return GraphInference(path, device=device)
    except ValueError as e:  # not this fork's dump format, or a device this machine lacks
        raise _readable(e, path) from e


def load_network(path):
    """A `megengine.utils.network.Network` of the dumped file ``path``."""
    from ..utils.network import Network

    _check_path(path)
    try:
        return Network.load(path)
    except ValueError as e:
        raise _readable(e, path) from e


# upstream's optimizer options that change how its C++ kernels run (layouts, fusions), not the
# values; megengine.utils.network_optimize.NO_EFFECT says why each has nothing to do here
KERNEL_LAYOUTS = ("--enable-hwcd4", "--enable-nchw4", "--enable-nchw88", "--enable-nchw44",
                  "--enable-nchw44-dot", "--enable-nchw32", "--enable-chwn4",
                  "--enable-fuse-conv-bias-nonlinearity", "--enable-fuse-conv-bias-with-z")


def no_effect(flag):
    """Why the layout or fusion ``flag`` (of `KERNEL_LAYOUTS`) has nothing to do here."""
    from ..utils.network_optimize import NO_EFFECT
    return NO_EFFECT[flag[2:].replace("-", "_")]


def add_optimizer(parser):
    """Upstream's inference-optimizer options, as its tools take them: ``--optimize-for-inference``
    and the ``--enable-*`` options, which act only with it. The float16 ones convert the
    program (`megengine.utils.network_optimize`) before it is used; the layout and fusion
    passes are accepted with a note (`optimizer_flags`, `no_effect`)."""
    group = parser.add_argument_group("inference optimizer (upstream's optimize_for_inference)")
    group.add_argument("--optimize-for-inference", action="store_true",
                       help="run the program through the inference optimizer with the "
                            "--enable-* options below, which act only with it (as upstream)")
    one = group.add_mutually_exclusive_group()
    one.add_argument("--enable-io16xc32", action="store_true",
                     help="float16 values between operators, float32 computation inside them; "
                          "inputs and outputs stay float32")
    one.add_argument("--enable-ioc16", action="store_true",
                     help="float16 values and computation; inputs and outputs stay float32")
    for flag in KERNEL_LAYOUTS:
        group.add_argument(flag, action="store_true",
                           help="accepted, no effect here: " + no_effect(flag))


def optimizer_flags(args):
    """The ``--enable-*`` options of `add_optimizer` given."""
    return [f for f in ("--enable-io16xc32", "--enable-ioc16", *KERNEL_LAYOUTS)
            if getattr(args, f[2:].replace("-", "_"), False)]


def float16_option(args):
    """The optimizer option the float16 flags of `add_optimizer` ask for (with
    ``--optimize-for-inference`` only), or None."""
    if not getattr(args, "optimize_for_inference", False):
        return None
    if getattr(args, "enable_io16xc32", False):
        return "enable_io16xc32"
    if getattr(args, "enable_ioc16", False):
        return "enable_ioc16"
    return None


def converted(path, option, outspec=None):
    """The dumped file ``path`` (its outputs, or the vars named in ``outspec``), written again
    with the inference optimizer's ``option``: a binary file object at its start."""
    from ..utils.network import Network

    _check_path(path)
    try:
        net = Network.load(path, outspec=outspec)
    except ValueError as e:
        raise _readable(e, path) from e
    buf = io.BytesIO()
    net.dump(buf, **({option: True} if option else {}))
    buf.seek(0)
    return buf


def add_unsupported(parser, options):
    """Add ``options`` ({"--flag": (takes_value, reason)}) to ``parser`` so that they show in
    ``--help`` and are recognised, to be refused by `reject_unsupported`."""
    group = parser.add_argument_group(
        "options of upstream's C++ runtime (refused here, see the reason in each)")
    for flag, (takes_value, reason) in options.items():
        if takes_value:
            group.add_argument(flag, default=None, help=f"not supported: {reason}")
        else:
            group.add_argument(flag, action="store_true", help=f"not supported: {reason}")


def reject_unsupported(args, options):
    """A ToolError naming the first option of ``options`` (see `add_unsupported`) that was
    given, with its reason; nothing if none was."""
    for flag, (takes_value, reason) in options.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if (value is not None) if takes_value else value:
            raise ToolError(f"{flag} is not supported by this fork: {reason}")


def format_table(rows, header=None):
    """``rows`` (lists of cells) as aligned text columns with rules above and below the header;
    a cell with newlines takes several lines."""
    rows = [[str(c) for c in r] for r in rows]
    all_rows = ([[str(h) for h in header]] if header else []) + rows
    if not all_rows:
        return ""
    n = max(len(r) for r in all_rows)
    all_rows = [r + [""] * (n - len(r)) for r in all_rows]
    widths = [max(len(line) for r in all_rows for line in r[i].split("\n")) for i in range(n)]
    rule = "  ".join("-" * w for w in widths)

    def lines_of(r):
        parts = [c.split("\n") for c in r]
        height = max(len(p) for p in parts)
        return ["  ".join((p[k] if k < len(p) else "").ljust(w) for p, w in zip(parts, widths))
                .rstrip() for k in range(height)]

    out = [rule]
    if header:
        out += lines_of(all_rows[0]) + [rule]
        all_rows = all_rows[1:]
    for r in all_rows:
        out += lines_of(r)
    out.append(rule)
    return "\n".join(out)


def print_out(*parts):
    """Print to the current stdout (tests capture it; a closed pipe ends quietly)."""
    try:
        print(*parts, file=sys.stdout)
    except BrokenPipeError:  # `... | head`: the reader left
        raise SystemExit(0)


def positive_int(text):
    """argparse type: an int >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v
