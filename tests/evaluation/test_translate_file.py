"""`mmtc translate --input/--output`: in input order, the same outputs as `mmtc eval`, streaming
in windows, the same over 2 processes, empty and over-long lines handled."""

import io
import subprocess
import sys

import pytest

from pipeline.evaluation.commands import count_lines
from pipeline.evaluation.translate_file import TranslateJob, translate_stream, windows

N = 32


def test_windows_and_line_counts(tmp_path):
    assert list(windows(iter(["a\n", "b\r\n", "c\n", "d"]), 3)) == [["a", "b", "c"], ["d"]]
    assert list(windows(iter([]), 3)) == []
    for text, n in (("", 0), ("a\n", 1), ("a\nb", 2), ("a\n\nb\n", 3)):
        (tmp_path / "f").write_text(text)
        assert count_lines(tmp_path / "f") == n


def test_reads_a_window_at_a_time(tiny_run):
    root, run, _ = tiny_run
    lines = (root / "eng-rev" / "test.eng").read_text().splitlines()[:12]
    read = []

    def source():
        for line in lines:
            read.append(line)
            yield line + "\n"

    class Sink(io.StringIO):
        seen_at_first_write = None

        def write(self, s):
            if self.seen_at_first_write is None:
                self.seen_at_first_write = len(read)
            return super().write(s)

    sink = Sink()
    counts = translate_stream(TranslateJob(str(run), "rev", beam=1), source(), sink, window=4)
    assert sink.seen_at_first_write == 4 and counts == {"lines": 12, "truncated": 0}
    assert len(sink.getvalue().splitlines()) == 12


@pytest.mark.slow
def test_file_translation_equals_eval_in_one_and_two_processes(tiny_run, mmtc_env):
    root, run, tag = tiny_run
    src = (root / "eng-rev" / "test.eng").read_text().splitlines()[:N]
    ours = (run / "eval" / tag / "test" / "eng-rev.hyp").read_text().splitlines()
    long_line = " ".join(["the big old house"] * 300)  # 1,200 words: past the 1,024 positions
    (root / "in.txt").write_text("\n".join(src[:10] + ["", long_line] + src[10:]) + "\n")
    outs = []
    for nproc in ("1", "2"):
        out = root / f"out{nproc}.txt"
        proc = subprocess.run([sys.executable, "-m", "pipeline", "translate", str(run), "--src", "eng", "--tgt", "rev",
                               "--beam", "1", "--input", str(root / "in.txt"), "--output", str(out), "--nproc", nproc,
                               "--window", "5"], env=mmtc_env, cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "1 of 34 lines were longer than the model's position table" in proc.stderr
        outs.append(out.read_text().splitlines())
    assert outs[0] == outs[1]
    got = outs[0]
    assert len(got) == N + 2 and got[10] == "" and got[:10] + got[12:] == ours
