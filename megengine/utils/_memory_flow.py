"""The ``memory_flow.svg`` picture of a profile: each array an op produced is a rectangle whose
x extent is its lifetime (from the end of the op that made it until the array was freed, or
the end of the profile) and whose y extent is its address range.

Addresses of a process are spread over a huge range, so the y axis leaves out the gaps: the
address ranges in use are merged into segments and stacked in address order, each as tall as
its byte count. Two arrays that reused the same memory at different times share the same rows,
which is what the picture is for (reuse, peaks, arrays that live too long).
"""
import bisect
import colorsys
import zlib
from xml.sax.saxutils import escape

__all__ = ["render"]

_WIDTH, _HEIGHT, _LEFT, _TOP, _BOTTOM = 1000, 500, 70, 30, 40


def _segments(blocks):
    """Sorted merged ``(start, end)`` address ranges covering every block, and each segment's
    y offset in bytes with the gaps between segments removed."""
    spans = sorted((b["addr"], b["addr"] + b["nbytes"]) for b in blocks)
    merged = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    offsets, total = [], 0
    for lo, hi in merged:
        offsets.append(total)
        total += hi - lo
    return merged, offsets, total


def _colour(name):
    # one stable colour per op name, so the arrays of one op type read as one family
    hue = (zlib.crc32(name.encode()) % 360) / 360.0
    r, g, b = colorsys.hls_to_rgb(hue, 0.55, 0.6)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def render(blocks, start_ns, stop_ns):
    """The SVG text for ``blocks`` (dicts with ``name``, ``shape``, ``dtype``, ``nbytes``,
    ``addr``, ``alloc_ns`` and ``free_ns``, None while alive) over ``[start_ns, stop_ns]``."""
    blocks = [b for b in blocks if b["nbytes"] > 0]
    span = max(stop_ns - start_ns, 1)
    merged, offsets, total = _segments(blocks)
    starts = [lo for lo, _ in merged]
    height = _TOP + _HEIGHT + _BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 20}" '
           f'height="{height}" font-family="sans-serif" font-size="12">',
           f'<text x="{_LEFT}" y="18">memory flow: {len(blocks)} arrays, {total} bytes of '
           f'addresses in use (gaps removed), {span / 1000.0:.1f} us</text>',
           f'<rect x="{_LEFT}" y="{_TOP}" width="{_WIDTH}" height="{_HEIGHT}" fill="none" '
           f'stroke="#888"/>',
           f'<text x="{_LEFT}" y="{_TOP + _HEIGHT + 16}">0 us</text>',
           f'<text x="{_LEFT + _WIDTH}" y="{_TOP + _HEIGHT + 16}" text-anchor="end">'
           f'{span / 1000.0:.1f} us</text>',
           f'<text x="{_LEFT + _WIDTH // 2}" y="{_TOP + _HEIGHT + 32}" text-anchor="middle">'
           f'time</text>',
           f'<text x="14" y="{_TOP + _HEIGHT // 2}" transform="rotate(-90 14 '
           f'{_TOP + _HEIGHT // 2})" text-anchor="middle">address (in-use ranges)</text>']
    for b in sorted(blocks, key=lambda b: b["alloc_ns"]):
        seg = bisect.bisect_right(starts, b["addr"]) - 1
        y_bytes = offsets[seg] + (b["addr"] - merged[seg][0])
        alive = b["free_ns"] is None
        end_ns = stop_ns if alive else min(b["free_ns"], stop_ns)
        x = _LEFT + _WIDTH * (b["alloc_ns"] - start_ns) / span
        w = max(_WIDTH * (end_ns - b["alloc_ns"]) / span, 1.0)
        y = _TOP + _HEIGHT * y_bytes / total
        h = max(_HEIGHT * b["nbytes"] / total, 1.0)
        title = (f'{b["name"]} {tuple(b["shape"])} {b["dtype"]} {b["nbytes"]} B at '
                 f'0x{b["addr"]:x}, {(b["alloc_ns"] - start_ns) / 1000.0:.1f}-'
                 f'{(end_ns - start_ns) / 1000.0:.1f} us' + (" (alive at stop)" if alive else ""))
        out.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" '
                   f'fill="{_colour(b["name"])}" stroke="#333" stroke-width="0.3">'
                   f'<title>{escape(title)}</title></rect>')
    out.append("</svg>")
    return "\n".join(out)
