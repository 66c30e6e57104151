"""``python3 -m megengine.tools.network_visualize model.mge --all``: parameters, FLOPs and
activations of a dumped program, per operator and in total (upstream's tool, on this fork's
dumps), and its graph as a TensorBoard log where a TensorBoard writer is installed.

What is counted (`op_flops`): the layer operators as `megengine.utils.module_stats` counts the
layers they come from (a convolution ``numel(out) * (Cin/groups * prod(kernel) + bias)``, a
transposed one ``numel(in) * Cout/groups * prod(kernel) + numel(out) * bias``, batch, layer,
group and instance normalization ``7 * numel(in)``, pooling ``numel(out) * prod(kernel)``;
an adaptive pooling is dumped as a pooling and counted so, where module_stats counts the layer
by upstream's formula)
and, as upstream's tool, a matrix product ``numel(out) * K`` and an elementwise operator
``numel(out)``. Parameters are the program's constants (every ``ImmutableTensor``: captured
parameters and buffers such as batch norm's running statistics, and numbers the program uses);
an activation is each computing operator's first output.
"""
import re

import numpy as np

from ._common import (ToolError, format_table, load_network, positive_int, print_out, run_tool,
                      tool_parser)

__all__ = ["op_flops", "visualize", "main"]


def _numel(shape):
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0


def op_flops(opr):
    """The FLOPs of operator ``opr`` (a `megengine.utils.network_node.OpNode`), or None for an
    operator that is not counted (see the module docstring)."""
    t = opr.type
    ins = [tuple(v.shape) for v in opr.inputs]
    out = tuple(opr.outputs[0].shape) if opr.outputs else ()
    if t in ("Convolution", "Convolution3D"):
        w = ins[1]
        sd = len(out) - 2  # spatial dims; the weight ends (..., Cin/groups, *kernel)
        bias = 1 if len(ins) > 2 else 0
        return _numel(out) * (w[-sd - 1] * _numel(w[-sd:]) + bias)
    if t == "ConvTranspose":
        w = ins[1]
        sd = len(out) - 2  # the weight ends (..., Cout/groups, *kernel)
        bias = 1 if len(ins) > 2 else 0
        return _numel(ins[0]) * w[-sd - 1] * _numel(w[-sd:]) + _numel(out) * bias
    if t in ("BatchNorm", "Normalize"):
        return 7 * _numel(ins[0])
    if t in ("Pooling", "AdaptivePooling"):
        kernel = opr.params.get("kernel")
        if kernel is None:
            return None
        k = _numel(kernel) if isinstance(kernel, (tuple, list)) else int(kernel) ** 2
        return _numel(out) * k
    if t in ("MatrixMul", "BatchedMatmul"):
        a = ins[0]
        k = a[-2] if opr.params.get("transposeA") else a[-1]
        return _numel(out) * k
    if t == "Dot":
        return _numel(ins[0])
    if t in ("Elemwise", "ElemwiseMultiType"):
        return _numel(out)
    return None


def _sizeof(num, suffix="B"):
    from ..utils.module_stats import sizeof_fmt

    return sizeof_fmt(num, suffix=suffix)


def collect(net):
    """(params, flops, activations) rows of a loaded `Network`: one dict per constant, per
    counted operator and per computing operator."""
    params, flops, acts = [], [], []
    for opr in net.all_oprs:
        if opr.type == "ImmutableTensor":
            value = np.asarray(opr.numpy())
            f = value.astype(np.float64) if value.size else np.zeros(1)
            params.append({"name": opr.name, "dtype": value.dtype, "shape": value.shape,
                           "mean": f"{f.mean():.3g}", "std": f"{f.std():.3g}",
                           "param_dim": int(value.size), "nbits": value.dtype.itemsize * 8,
                           "size": int(value.nbytes)})
            continue
        if opr.type == "Host2DeviceCopy":
            continue
        n = op_flops(opr)
        if n is not None:
            flops.append({"name": opr.name, "class_name": opr.type,
                          "input_shapes": [tuple(v.shape) for v in opr.inputs],
                          "output_shapes": [tuple(v.shape) for v in opr.outputs],
                          "flops_num": int(n)})
        if opr.outputs:
            v = opr.outputs[0]
            dtype = np.dtype(v.dtype)
            dim = _numel(v.shape)
            acts.append({"name": opr.name, "class_name": opr.type, "dtype": dtype,
                         "shape": tuple(v.shape), "nbits": dtype.itemsize * 8, "act_dim": dim,
                         "size": dim * dtype.itemsize})
    return params, flops, acts


def _table(rows, header, total_row):
    body = [[r.get(h, "") for h in header] for r in rows]
    body.append([total_row.get(h, "") for h in header])
    return format_table(body, header)


def _write_tensorboard(net, log_path, flops):
    """The graph as a TensorBoard log in ``log_path``; a ToolError if no writer is installed."""
    try:
        from tensorboard.compat.proto.attr_value_pb2 import AttrValue
        from tensorboard.compat.proto.config_pb2 import RunMetadata
        from tensorboard.compat.proto.graph_pb2 import GraphDef
        from tensorboard.compat.proto.node_def_pb2 import NodeDef
        from tensorboard.compat.proto.step_stats_pb2 import DeviceStepStats, StepStats
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.compat.proto.versions_pb2 import VersionDef
    except ImportError as e:
        raise ToolError(f"--log_path needs the tensorboard package for its graph protocol "
                        f"buffers ({e}); install it (pip install tensorboard), or leave "
                        "--log_path out to print the tables only") from e
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ToolError("--log_path needs a TensorBoard writer (tensorboardX, or torch "
                            f"with tensorboard installed): {e}") from e

    def tb_name(name):
        # TensorBoard groups by '/': module paths (conv.weight) become groups; a name that
        # starts like a number would be misread, so it stays as it is
        name = str(name)
        return (name if re.match(r"^[+-]?\d*\.\d*", name) else name.replace(".", "/"))

    flops_of = {r["name"]: r["flops_num"] for r in flops}
    nodes = []
    for opr in net.all_oprs:
        if not opr.outputs:
            continue
        out = opr.outputs[0]
        attr = {"_output_shapes": AttrValue(list=AttrValue.ListValue(shape=[TensorShapeProto(
                    dim=[TensorShapeProto.Dim(size=int(d)) for d in out.shape])])),
                "params": AttrValue(s=str(opr.params).encode()),
                "dtype": AttrValue(s=str(np.dtype(out.dtype)).encode())}
        if opr.name in flops_of:
            attr["flops"] = AttrValue(s=_sizeof(flops_of[opr.name], "OPs").encode())
        nodes.append(NodeDef(name=tb_name(opr.name), op=opr.type,
                             input=[tb_name(v.owner.name) for v in opr.inputs], attr=attr))
    graph_def = GraphDef(node=nodes, versions=VersionDef(producer=22))
    stats = RunMetadata(step_stats=StepStats(dev_stats=[DeviceStepStats(device="/device:CPU:0")]))
    writer = SummaryWriter(log_path)
    writer._get_file_writer().add_graph((graph_def, stats))
    writer.close()


def visualize(model_path, log_path=None, bar_length_max=20, log_params=True, log_flops=True,
              log_activations=True):
    """Print the tables of ``model_path`` (a dumped program) that the ``log_*`` switches choose
    and the summary; write the graph to ``log_path`` as a TensorBoard log when it is given.
    Returns ``(total_param_size, total_flops)`` (bytes, ops), as upstream."""
    from ..utils.module_stats import _add_totals  # (here: it loads megengine.module)

    net = load_network(model_path)
    params, flops, acts = collect(net)
    total_dims = sum(r["param_dim"] for r in params)
    total_size = _add_totals(params, "size", bar_length_max, _sizeof)
    total_flops = _add_totals(flops, "flops_num", bar_length_max, lambda n: _sizeof(n, "OPs"),
                              cum_key="flops_cum")
    total_act_dims = sum(r["act_dim"] for r in acts)
    total_act_size = _add_totals(acts, "size", bar_length_max, _sizeof)
    if log_params:
        rows = [dict(r, size=_sizeof(r["size"]), size_bar=r["bar"]) for r in params]
        print_out("param stats:\n" + _table(rows, [
            "name", "dtype", "shape", "mean", "std", "param_dim", "nbits", "size", "size_cum",
            "percentage", "size_bar"], {"name": "total", "param_dim": total_dims,
                                        "size": _sizeof(total_size)}))
    if log_flops:
        rows = [dict(r, flops=_sizeof(r["flops_num"], "OPs")) for r in flops]
        print_out("flops stats:\n" + _table(rows, [
            "name", "class_name", "input_shapes", "output_shapes", "flops", "flops_cum",
            "percentage", "bar"], {"name": "total", "flops": _sizeof(total_flops, "OPs")}))
    if log_activations:
        rows = [dict(r, size=_sizeof(r["size"]), size_bar=r["bar"]) for r in acts]
        print_out("activations stats:\n" + _table(rows, [
            "name", "class_name", "dtype", "shape", "nbits", "act_dim", "size", "size_cum",
            "percentage", "size_bar"], {"name": "total", "act_dim": total_act_dims,
                                        "size": _sizeof(total_act_size)}))
    summary = [("#ops", len(net.all_oprs)), ("#params", len(params)),
               ("total_param_dims", _sizeof(total_dims, "")),
               ("total_param_size", _sizeof(total_size)),
               ("total_flops", _sizeof(total_flops, "OPs")),
               ("total_act_dims", _sizeof(total_act_dims, "")),
               ("total_act_size", _sizeof(total_act_size))]
    if total_size:
        summary.append(("flops/param_size", f"{total_flops / total_size:3.3f}"))
    print_out("summary\n" + format_table(summary, ["item", "value"]))
    if log_path:
        _write_tensorboard(net, log_path, flops)
        print_out(f"TensorBoard graph written to {log_path}")
    return total_size, total_flops


def build_parser():
    parser = tool_parser("network_visualize",
                         "print the parameters, FLOPs and activations of a program dumped by "
                         "megengine.jit.trace.dump, and write its graph for TensorBoard")
    parser.add_argument("model_path", help="the dumped program")
    parser.add_argument("--log_path", help="write the graph as a TensorBoard log here (needs "
                        "tensorboard, and tensorboardX or torch's writer)")
    parser.add_argument("--bar_length_max", type=positive_int, default=20,
                        help="width of the bar of the largest row")
    parser.add_argument("--log_params", "--cal_params", action="store_true",
                        help="print the parameter table")
    parser.add_argument("--log_flops", "--cal_flops", action="store_true",
                        help="print the FLOPs table")
    parser.add_argument("--log_activations", "--cal_activations", action="store_true",
                        help="print the activations table")
    parser.add_argument("--logging_to_stdout", action="store_true",
                        help="upstream's switch for printing the tables: they are always "
                             "printed here")
    parser.add_argument("--all", action="store_true",
                        help="print all tables; also write the TensorBoard log (to ./log "
                             "unless --log_path is given) when a TensorBoard writer is installed")
    return parser


def _run(args):
    if args.all:
        args.log_params = args.log_flops = args.log_activations = True
        if not args.log_path:
            try:  # --all writes ./log as upstream, where a writer is installed
                import tensorboard  # noqa: F401
                args.log_path = "./log"
            except ImportError:
                print_out("(no TensorBoard log: the tensorboard package is not installed)")
    return visualize(args.model_path, args.log_path, args.bar_length_max, args.log_params,
                     args.log_flops, args.log_activations)


def main(argv=None):
    """Run the tool on ``argv`` (default ``sys.argv[1:]``); returns ``(total_param_size,
    total_flops)``."""
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    main()
