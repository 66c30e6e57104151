"""megengine.tools.draw_graph: the .dot text of a dumped program against its known structure."""
import re
import shutil

import pytest

from megengine.tools import draw_graph
from megengine.utils.network import Network

# the tiny net's operators after its input, each reading the one before
# a convolution's and a linear layer's bias is an ADD of its own, as in upstream's graph
TINY_CHAIN = ["conv.Convolution", "conv.ADD", "bn.BatchNorm", "RELU", "pool.Pooling", "Reshape",
              "fc.MatrixMul", "fc.ADD"]


def nodes_and_edges(text):
    nodes = dict(re.findall(r'^  (opr\d+) \[label="(.*)"\];$', text, re.M))
    edges = re.findall(r"^  (opr\d+):o(\d+) -> (opr\d+|out\d+)(?::i(\d+))?;$", text, re.M)
    return nodes, edges


def test_tiny_net_is_a_chain_with_constants_on_ports(tiny, tmp_path):
    _, plain, _ = tiny
    out = tmp_path / "g.dot"
    text = draw_graph.main(["-i", plain, "-o", str(out), "--opr-attr", "stride"])
    assert out.read_text() == text and text.startswith("// plot for")
    assert text.count("{") - text.count("\\{") == text.count("}") - text.count("\\}")
    nodes, edges = nodes_and_edges(text)
    names = {k: v.split("|")[0] for k, v in nodes.items()}
    label_of = {k: v for k, v in nodes.items()}
    # one box per operator that computes, plus the input; constants are ports, not boxes
    assert len(nodes) == 1 + len(TINY_CHAIN)
    assert not any("conv.weight" in n for n in names.values())
    net = Network.load(plain)
    id_of = {o.name: f"opr{o.id}" for o in net.all_oprs}
    chain = ["data"] + TINY_CHAIN
    want_edges = {(id_of[a], id_of[b]) for a, b in zip(chain, chain[1:])}
    got = {(src, dst) for src, _, dst, _ in edges if dst.startswith("opr")}
    assert got == want_edges
    conv = label_of[id_of["conv.Convolution"]]
    assert "const conv.weight\\n\\{3,2,3,3\\}" in conv  # the weight on its port
    assert "stride: (1, 1)" in conv and "Convolution" in conv
    assert "\\{1,3,4,4\\} float32" in conv  # its output var: shape and dtype
    assert any(dst.startswith("out") for _, _, dst, _ in edges)  # the output 'logits'


def test_dest_nodes_and_depth(tiny, tmp_path):
    _, plain, _ = tiny
    net = Network.load(plain)
    relu = net.get_var_by_name("RELU")
    for spec in (str(relu.id), "RELU"):
        text = draw_graph.main(["-i", plain, "-o", str(tmp_path / "g.dot"), "-d", spec])
        nodes, _ = nodes_and_edges(text)
        assert len(nodes) == 5  # data, conv, its bias ADD, bn, relu
    text = draw_graph.main(["-i", plain, "-o", str(tmp_path / "g.dot"), "-d", "RELU",
                            "--depth", "2"])
    nodes, _ = nodes_and_edges(text)
    id_of = {o.name: f"opr{o.id}" for o in net.all_oprs}
    assert set(nodes) == {id_of["RELU"], id_of["bn.BatchNorm"]}


def test_end_vars_from_leaves_out_the_other_programs_operators(tiny, tmp_path):
    _, plain, _ = tiny
    head = tmp_path / "head.mge"  # the program up to the relu
    Network.load(plain, outspec=["RELU"]).dump(str(head))
    text = draw_graph.main(["-i", plain, "-o", str(tmp_path / "g.dot"),
                            "--end-vars-from", str(head)])
    nodes, edges = nodes_and_edges(text)
    net = Network.load(plain)
    id_of = {o.name: f"opr{o.id}" for o in net.all_oprs}
    assert set(nodes) == {id_of[n] for n in TINY_CHAIN[4:]}  # pool onwards
    assert (id_of["RELU"], id_of["pool.Pooling"]) not in {(a, c) for a, _, c, _ in edges}
    text = draw_graph.main(["-i", plain, "-o", str(tmp_path / "g.dot"),
                            "--end-vars-from", plain])
    assert nodes_and_edges(text)[0] == {}  # everything computed already


def test_errors(tiny, tmp_path, capsys):
    _, plain, _ = tiny
    bad = [(["-i", str(tmp_path / "none.mge"), "-o", str(tmp_path / "g.dot")], "no such model"),
           (["-i", plain, "-o", str(tmp_path / "g.dot"), "-d", "nothing"], "no var with id"),
           (["-i", plain, "-o", str(tmp_path / "g.dot"), "--profile"], "--profile is not")]
    if shutil.which("dot") is None:
        bad.append((["-i", plain, "-o", str(tmp_path / "g.png"), "--output-format", "png"],
                    "needs Graphviz's dot command"))
    for argv, message in bad:
        with pytest.raises(SystemExit) as e:
            draw_graph.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err
