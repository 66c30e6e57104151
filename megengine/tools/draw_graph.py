"""``python3 -m megengine.tools.draw_graph -i model.mge -o graph.dot``: a Graphviz picture of a
dumped program, written as ``.dot`` text (no graphviz package needed; ``dot -Tpng graph.dot -o
graph.png`` draws it).

Each operator is a record node: its input ports on top (a constant input shows as ``const``
with its name and shape instead of a node of its own, as upstream draws ``ImmutableTensor``), the
operator's name and type (and the ``--opr-attr`` parameters) in the middle, its output vars with
their names, shapes and dtypes at the bottom; an edge runs from a var to each port that reads it.
Upstream's tool reads the JSON of its C++ graph (``Graph._to_json``); this one reads the program
file `megengine.jit.trace.dump` wrote, whose vars and operators are numbered as
`megengine.utils.network.Network` numbers them (``--dest-nodes`` takes those var ids, or names).
"""
import os
import shutil
import subprocess

import numpy as np

from ._common import ToolError, load_network, print_out, run_tool, tool_parser

__all__ = ["to_dot", "main"]


def _quote(s):
    """Text for a record label: its field separators and quotes escaped."""
    for k, v in (("\\", "\\\\"), ("{", "\\{"), ("}", "\\}"), ("|", "\\|"), ("<", "\\<"),
                 (">", "\\>"), ('"', '\\"'), ("\n", "\\n")):
        s = s.replace(k, v)
    return s


def _shape(v):
    try:
        return "{" + ",".join(str(d) for d in v.shape) + "}"
    except Exception:  # noqa: BLE001 (a var whose shape cannot be inferred)
        return "<?>"


def _describe_var(v):
    return f"{v.name}\n{_shape(v)} {np.dtype(v.dtype).name}"


def to_dot(net, title="", dest_vars=None, depth=None, opr_attr=(), end_oprs=(),
           prune_dangling_vars=False):
    """The ``.dot`` text of a loaded `megengine.utils.network.Network`.

    ``dest_vars``: draw only what these VarNodes depend on (default: everything);
    ``depth``: at most this many operators back from them; ``opr_attr``: parameter names to
    show in each operator's box; ``end_oprs``: names of operators not to draw (taken as
    computed already); ``prune_dangling_vars``: leave out vars no operator reads that are not
    outputs of the program."""
    outputs = {id(v) for v in net.output_vars}
    readers = {}
    for opr in net.all_oprs:
        for v in opr.inputs:
            readers.setdefault(id(v), []).append(opr)
    drawn = {}  # id(opr) -> opr, in the order they are reached
    levels = {}  # id(opr) -> its distance from the destination vars

    def add_opr(opr, level):
        if opr.type == "ImmutableTensor" or opr.name in end_oprs:
            return
        if depth is not None and level > depth:
            return
        if id(opr) in levels and levels[id(opr)] <= level:
            return
        levels[id(opr)] = level
        drawn.setdefault(id(opr), opr)
        for v in opr.inputs:
            if v.owner is not None:
                add_opr(v.owner, level + 1)

    if dest_vars:
        for v in dest_vars:
            add_opr(v.owner, 1)
    else:
        for opr in net.all_oprs:
            add_opr(opr, 1)
    order = {id(o): k for k, o in enumerate(net.all_oprs)}
    oprs = sorted(drawn.values(), key=lambda o: order.get(id(o), len(order)))

    lines = [f"// {title}" if title else "// megengine program",
             "digraph megengine_program {", "  node [shape=record, fontsize=10];",
             "  rankdir=TB;"]
    edges = []
    for opr in oprs:
        in_ports = []
        for k, v in enumerate(opr.inputs):
            src = v.owner
            if src is not None and src.type == "ImmutableTensor":
                text = f"const {v.name}\n{_shape(v)}"
            else:
                text = _shape(v)
                if src is not None and id(src) in drawn:
                    edges.append(f"  opr{src.id}:o{v.id} -> opr{opr.id}:i{k};")
            in_ports.append(f"<i{k}> {_quote(text)}")
        label = [opr.name or "", opr.type or type(opr).__name__]
        for attr in opr_attr:
            label.append(f"{attr}: {opr.params.get(attr, 'N/A')}")
        out_ports = []
        for v in opr.outputs:
            if (prune_dangling_vars and id(v) not in readers and id(v) not in outputs):
                continue
            out_ports.append(f"<o{v.id}> {_quote(_describe_var(v))}")
        fields = []
        if in_ports:
            fields.append("{" + "|".join(in_ports) + "}")
        fields.append(_quote("\n".join(label)))
        if out_ports:
            fields.append("{" + "|".join(out_ports) + "}")
        lines.append(f'  opr{opr.id} [label="{{{"|".join(fields)}}}"];')
    for v in net.output_vars:
        if v.owner is not None and id(v.owner) in drawn:
            lines.append(f'  out{v.id} [shape=ellipse, label="{_quote("output " + v.name)}"];')
            edges.append(f"  opr{v.owner.id}:o{v.id} -> out{v.id};")
    lines += edges
    lines.append("}")
    return "\n".join(lines) + "\n", len(oprs)


def _dest_vars(net, spec):
    by_id = {v.id: v for v in net.all_vars}
    by_name = {}
    for v in net.all_vars:
        by_name.setdefault(v.name, v)
    out = []
    for item in spec.split(","):
        item = item.strip()
        if item.lstrip("-").isdigit() and int(item) in by_id:
            out.append(by_id[int(item)])
        elif item in by_name:
            out.append(by_name[item])
        else:
            raise ToolError(f"--dest-nodes: the program has no var with id or name {item!r}; "
                            f"its var ids are 0..{max(by_id)} (the draw without -d shows "
                            "them as ports o<id>)")
    return out


def build_parser():
    parser = tool_parser("draw_graph", "write a Graphviz .dot picture of a program dumped by "
                                       "megengine.jit.trace.dump")
    parser.add_argument("-i", "--input", required=True, help="the dumped program")
    parser.add_argument("-o", "--output", required=True, help="the .dot file to write")
    parser.add_argument("-d", "--dest-nodes",
                        help="comma-separated var ids (or names): draw what they depend on; "
                             "default: the whole program")
    parser.add_argument("--end-vars-from",
                        help="another dumped program whose operators (by name) are not drawn")
    parser.add_argument("--prune-dangling-vars", action="store_true",
                        help="leave out vars no operator reads (outputs of the program stay)")
    parser.add_argument("--opr-attr", action="append", default=[],
                        help="an operator parameter to show in the boxes (repeatable)")
    parser.add_argument("--depth", type=int,
                        help="draw at most this many operators back from the destination vars")
    parser.add_argument("--output-format", default="dot",
                        help="dot, or a format of Graphviz's dot command (png, pdf, svg), "
                             "which must be installed")
    parser.add_argument("--profile", action="store_true",
                        help="not supported: upstream annotates operators with the times its "
                             "graph profiler stores in the JSON; this fork's profiler records "
                             "ops by type, without the program's operator ids")
    return parser


def _run(args):
    if args.profile:
        raise ToolError("--profile is not supported by this fork: its profiler records ops by "
                        "type, without the program's operator ids, so times cannot be put on "
                        "the boxes; see profile_analyze for the times")
    net = load_network(args.input)
    dest = _dest_vars(net, args.dest_nodes) if args.dest_nodes else None
    end = set()
    if args.end_vars_from:
        end = {o.name for o in load_network(args.end_vars_from).all_oprs}
    text, n_oprs = to_dot(net, f"plot for {args.input}", dest, args.depth, args.opr_attr, end,
                          args.prune_dangling_vars)
    stem, ext = os.path.splitext(args.output)
    dot_path = args.output if ext == ".dot" or args.output_format == "dot" else stem + ".dot"
    with open(dot_path, "w", encoding="utf-8") as f:
        f.write(text)
    print_out(f"plot with {n_oprs} oprs written to {dot_path}")
    if args.output_format != "dot":
        dot = shutil.which("dot")
        if dot is None:
            raise ToolError(f"--output-format {args.output_format} needs Graphviz's dot "
                            f"command, which is not installed; {dot_path} is written, draw it "
                            "where Graphviz is")
        target = f"{stem}.{args.output_format}"
        run = subprocess.run([dot, f"-T{args.output_format}", "-o", target, dot_path],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise ToolError(f"dot -T{args.output_format} failed: {run.stderr.strip()}")
        print_out(f"drawn to {target}")
    return text


def main(argv=None):
    """Run the tool on ``argv`` (default ``sys.argv[1:]``); returns the ``.dot`` text."""
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    main()
