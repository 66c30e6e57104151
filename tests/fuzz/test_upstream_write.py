"""CI slice of tests.fuzz.upstream_write: random inference programs dumped in upstream's format
read back here to eager's values (the upstream side runs offline, with ``--upstream``)."""
from tests.fuzz import upstream_write


def test_written_programs_read_back_to_eager_values(tmp_path, capsys):
    stats, refused, wrong = upstream_write.write(range(1000, 1012), str(tmp_path))
    assert wrong == []
    assert stats.get("written", 0) >= 6  # (most of these programs have writers)
    assert len(list(tmp_path.glob("w*.mge"))) == stats["written"]
    assert upstream_write.main(["--seeds", "2", "--start", "1000"]) == 0
    assert "read back here to other values: none" in capsys.readouterr().out


def test_a_value_off_by_more_than_the_tolerance_is_a_finding():
    import numpy as np

    w = [np.array([1.0, 2.0])]
    assert upstream_write._close([np.array([1.0, 2.00001])], w)
    assert not upstream_write._close([np.array([1.0, 2.01])], w)
    big = [np.array([0.0, 100.0])]  # (to 1e-4 of the output's largest magnitude)
    assert upstream_write._close([np.array([0.005, 100.0])], big)
    assert not upstream_write._close([np.array([0.02, 100.0])], big)
    assert not upstream_write._close([np.array([1.0])], w)  # (a size of its own)
    assert not upstream_write._close([], w)


def test_only_an_exp_that_overflowed_eagerly_is_set_apart(tmp_path):
    import numpy as np

    # program 3518: log(exp(h) + 1) of h near 368, inf eagerly, upstream's exp 2.4e38 (mostly)
    np.savez(tmp_path / "w1.npz", want0=np.float32([np.nan, 1.0]), want1=np.int32(2))
    np.savez(tmp_path / "w2.npz", want0=np.float32([0.5, 1.0]))
    assert upstream_write._overflows("h = F.log(F.exp(h) + 1.0)", str(tmp_path), 1)
    assert not upstream_write._overflows("h = F.log(h + 1.0)", str(tmp_path), 1)
    assert not upstream_write._overflows("h = F.exp(h)", str(tmp_path), 2)


def test_a_count_of_a_data_decided_size_that_the_data_makes_zero_reads_back(tmp_path):
    # program 3795 (--dyn): upstream's graph counts arange(v.shape[0]) as MAX(CEIL(n), 0.0);
    # read back here, max(0.0, n) was an int where n was, so the count was rounded only where
    # the traced value was a float, and the data's n of 0 gave linspace a count of 0.0
    # (TypeError)
    stats, refused, wrong = upstream_write.write([3795], str(tmp_path), dyn=True)
    assert stats == {"written": 1} and wrong == []


def test_the_traces_rewrites_of_what_overflowed_eagerly_are_not_findings(tmp_path):
    import numpy as np

    # program 4153: F.log(F.exp(h)) of h near 500 is h in the file (the trace's rewrite, as
    # upstream's), inf eagerly
    stats, refused, wrong = upstream_write.write([4153], str(tmp_path))
    assert stats == {"written": 1} and wrong == []
    w = [np.float32([np.inf, 1.0])]
    assert upstream_write._close([np.float32([502.0, 1.0])], w, rewrites=True)
    assert not upstream_write._close([np.float32([502.0, 1.0])], w)
    assert not upstream_write._close([np.float32([502.0, 1.5])], w, rewrites=True)
