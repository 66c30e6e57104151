"""``python3 -m megengine.tools.profile_analyze profile.json -t 5``: tables of a profile that
`megengine.utils.profiler.Profiler` (or ``load_network_and_run --profile``) wrote: a summary,
then the top operators by time, filtered (``--type``, ``--opr-name``, ``--min-time``, ...)
and optionally aggregated per type (``--aggregate-by type --aggregate sum``).

The file is the Chrome trace our profiler writes (upstream's tool reads the JSON of its C++
graph profiler). Each op event (``"ph": "X"``, forward ops and ``<Op>Backward`` passes) is one
record: its type is the op's name, its name the profiler scopes it ran in and its type
(``step/Convolution``), its time the event's duration. That profiler measures one time per op
(its wall time; on a GPU the device is waited for after each op), so the summary's "total
device time" is the sum of the op times and "total host time" the span from the first op's
start to the last op's end; upstream's separate host and device tables (``--show-host``,
``--print-only host``, ``--top-end-key kern``) and per-input dtypes (``--input-dtype``) have no
data here and are refused.
"""
import json
import os
import re
import textwrap

import numpy as np

from ._common import ToolError, format_table, print_out, run_tool, tool_parser

__all__ = ["Record", "read_profile", "select", "main"]


class Record:
    """One op of the profile, or an aggregate of several (``count`` > 1)."""

    def __init__(self, idx, type, name, time, start=0.0, device=None, in_shapes=None,
                 out_shapes=None, params=None, count=1):
        self.idx, self.type, self.name, self.time = idx, type, name, time
        self.start, self.device, self.count = start, device, count
        self.in_shapes, self.out_shapes, self.params = in_shapes, out_shapes, params

    @property
    def info(self):
        """The operator info column, as upstream's ``record.info`` (an ordered dict)."""
        info = {"id": str(self.idx), "name": self.name, "type": self.type}
        if self.count > 1:
            info["count"] = str(self.count)
        if self.device:
            info["device"] = str(self.device)
        if self.params:
            info["params"] = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return info


def _find_trace(path):
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".chrome_timeline.json"))
        if len(names) != 1:
            raise ToolError(f"{path!r} is a directory with {len(names)} *.chrome_timeline.json "
                            f"files {names}; give one of them")
        return os.path.join(path, names[0])
    if not os.path.exists(path):
        raise ToolError(f"no such profile file: {path!r}")
    return path


def read_profile(path):
    """The op `Record` list of a Chrome trace written by `megengine.utils.profiler` (a file,
    or a directory holding one ``<pid>.chrome_timeline.json``)."""
    path = _find_trace(path)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ToolError(f"{path!r} is not a JSON profile ({e}); give the file "
                        "megengine.utils.profiler.Profiler or load_network_and_run --profile "
                        "wrote") from e
    events = content.get("traceEvents") if isinstance(content, dict) else content
    if not isinstance(events, list):
        raise ToolError(f"{path!r} holds no Chrome trace events (a 'traceEvents' list); give "
                        "the file megengine.utils.profiler.Profiler wrote")
    records, scopes = [], {}
    # scope events and op events of a thread come in time order; a stack per thread names ops
    for e in sorted((e for e in events if isinstance(e, dict) and e.get("ph") in ("X", "B", "E")),
                    key=lambda e: (e.get("ts", 0), e.get("ph") != "B")):
        stack = scopes.setdefault(e.get("tid"), [])
        if e["ph"] == "B":
            stack.append(str(e.get("name")))
        elif e["ph"] == "E":
            if stack:
                stack.pop()
        else:
            args = e.get("args") or {}
            name = "/".join(stack + [str(e.get("name"))])
            records.append(Record(len(records), str(e.get("name")), name,
                                  float(e.get("dur", 0.0)) * 1e-6, float(e.get("ts", 0.0)) * 1e-6,
                                  args.get("device"), args.get("inputs", args.get("grads")),
                                  args.get("outputs"), args.get("params")))
    if not records:
        raise ToolError(f"{path!r} holds no op events; was anything run while the profiler "
                        "recorded?")
    return records


_AGGREGATE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


def select(records, top=None, types=None, opr_name=None, min_time=-np.inf, max_time=np.inf,
           aggregate=None, aggregate_by=None, order_by="time"):
    """The records to show: filtered by type (a list), name (a regex matched at the start, as
    upstream) and time bounds (seconds), optionally aggregated (``aggregate`` of the times,
    per type with ``aggregate_by="type"``, else over all), sorted by ``order_by`` (a column,
    descending; ``+column`` ascending) and cut to ``top``."""
    rx = re.compile(opr_name) if opr_name else None
    chosen = [r for r in records
              if (not types or r.type in types) and (rx is None or rx.match(r.name))
              and min_time <= r.time <= max_time]
    if aggregate_by is not None or aggregate is not None:
        fn = _AGGREGATE[aggregate or "sum"]
        groups = {}
        for r in chosen:
            groups.setdefault(r.type if aggregate_by == "type" else "all", []).append(r)
        chosen = [Record(k, key if aggregate_by == "type" else "all ops",
                         key if aggregate_by == "type" else "*", float(fn([r.time for r in g])),
                         count=len(g)) for k, (key, g) in enumerate(groups.items())]
    key = order_by.lstrip("+")
    if key not in ("time", "count", "type", "name", "id"):
        raise ToolError(f"--order-by {order_by!r}: the columns are time, count, type, name and "
                        "id (a leading + sorts ascending)")
    getter = {"id": lambda r: r.idx}.get(key, lambda r: getattr(r, key))
    chosen.sort(key=getter, reverse=not order_by.startswith("+"))
    if top:
        chosen = chosen[:top]
    return chosen


def _shapes(shapes, sep="\n"):
    if not shapes:
        return ""
    return sep.join("{" + ",".join(map(str, s)) + "}" for s in shapes)


def _markdown(rows, header):
    cells = [[str(c).replace("\n", " ").replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def summary_table(records, args):
    tot_dev = sum(r.time for r in records)
    tot_host = max(r.start + r.time for r in records) - min(r.start for r in records)
    rows = [("total device time", f"{tot_dev:.6g}"), ("total host time", f"{tot_host:.6g}"),
            ("ops", len(records))]
    if args.copy_time:
        copies = [r.time for r in records if r.type == "Copy"]
        rows.append(("copy time", f"tot={sum(copies):.6g} avg="
                                  f"{(sum(copies) / len(copies)) if copies else 0:.6g}"))
    if args.confluence:
        return _markdown(rows, ["name", "value"]), tot_dev
    return format_table(rows), tot_dev


def details_table(records, tot_time, args):
    if args.top_end_key != "end":
        raise ToolError("--top-end-key kern is not supported by this fork: its profiler "
                        "records one time per op, not upstream's kernel wait time")
    chosen = select(records, args.top, args.type, args.opr_name, args.min_time, args.max_time,
                    args.aggregate, args.aggregate_by, args.order_by)
    if args.dump_only_opr:
        return "\n".join(" ".join(r.info.values()) for r in chosen)
    if not chosen:
        return "(no operator matches the filters)"
    tot = tot_time or 1.0
    rows, cum = [], 0.0
    largest = max(r.time for r in chosen) or 1.0
    for k, r in enumerate(chosen):
        cum += r.time
        if args.confluence:
            rows.append([k, f"{r.time:.3g}", f"{r.time / tot * 100:.1f}%",
                         "#" * int(r.time / largest * 15), f"{cum:.3g}",
                         f"{cum / tot * 100:.1f}%"] + list(r.info.values())[:3]
                        + [_shapes(r.in_shapes, ", "), _shapes(r.out_shapes, ", ")])
        else:
            info = "\n".join("\n-  ".join(textwrap.wrap(f"{key}: {v}", width=40))
                             for key, v in r.info.items())
            rows.append([f"#{k}\n{r.time:.3g}\n{r.time / tot * 100:.1f}%",
                         f"{cum:.3g}\n{cum / tot * 100:.1f}%", info,
                         _shapes(r.in_shapes), _shapes(r.out_shapes)])
    if args.confluence:
        return _markdown(rows, ["#", "time", "ratio", "time bar", "cum-time", "cum-time ratio",
                                "opr id", "opr name", "opr type", "in_shapes", "out_shapes"])
    return format_table(rows, ["device self time", "cumulative", "operator info", "in_shapes",
                               "out_shapes"])


def build_parser():
    parser = tool_parser("profile_analyze",
                         "analyze a profile written by megengine.utils.profiler.Profiler")
    parser.add_argument("dump", help="the profile (a *.chrome_timeline.json file, or the "
                                     "directory holding one)")
    parser.add_argument("-t", "--top", type=int, default=3,
                        help="number of most time-consuming operators to print (0: all)")
    parser.add_argument("--type", action="append", help="only operators of this type (the op "
                        "name in the profile, e.g. Convolution); repeatable")
    parser.add_argument("--aggregate-by", default=None, choices=["type"],
                        help="aggregate the operators per type")
    parser.add_argument("--opr-name", help="only operators whose name (scopes/type) matches "
                                           "this regex at its start")
    parser.add_argument("--input-dtype", help="not supported: the profile records no dtypes")
    parser.add_argument("--top-end-key", default="end", choices=["end", "kern"],
                        help="end: the op's time; kern (upstream's kernel wait time) is not "
                             "recorded here")
    parser.add_argument("--aggregate", default=None, choices=["max", "min", "sum", "mean"],
                        help="how times are aggregated (all operators, or per type with "
                             "--aggregate-by type; default sum)")
    parser.add_argument("--order-by", default="time",
                        help="sort by this column (time, count, type, name, id), descending; "
                             "+<column> ascending")
    parser.add_argument("--copy-time", action="store_true",
                        help="show the time of Copy operators in the summary")
    parser.add_argument("--min-time", type=float, default=float("-inf"),
                        help="minimal time (seconds) of an operator to be printed")
    parser.add_argument("--max-time", type=float, default=float("inf"),
                        help="maximal time (seconds) of an operator to be printed")
    parser.add_argument("--show-host", action="store_true",
                        help="not supported: one time per op is recorded, shown in the table")
    parser.add_argument("--dump-only-opr", action="store_true",
                        help="print the chosen operators' info only, one per line (for diffs)")
    parser.add_argument("--confluence", "--wiki", action="store_true",
                        help="print Markdown tables")
    parser.add_argument("--print-only", choices=["summary", "device", "host"],
                        help="print only the summary or the operators table")
    return parser


def _run(args):
    if args.input_dtype:
        raise ToolError("--input-dtype is not supported by this fork: its profiler records the "
                        "input shapes of each op, not their dtypes")
    if args.show_host or args.print_only == "host":
        raise ToolError("--show-host and --print-only host are not supported by this fork: its "
                        "profiler records one time per op (the table shows it), not upstream's "
                        "separate host and device times")
    records = read_profile(args.dump)
    summary, tot = summary_table(records, args)
    if args.print_only == "summary":
        text = summary
    elif args.print_only == "device":
        text = details_table(records, tot, args)
    else:
        text = summary + "\n\n" + details_table(records, tot, args)
    print_out(text)
    return text


def main(argv=None):
    """Run the tool on ``argv`` (default ``sys.argv[1:]``); returns the printed text."""
    return run_tool(build_parser(), _run, argv)


if __name__ == "__main__":
    main()
