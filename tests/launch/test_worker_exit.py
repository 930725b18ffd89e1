"""How a training process leaves: the process group first, then no interpreter teardown (where a
gloo worker thread freeing tensors without a live interpreter aborted a finished rank)."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import atexit, os, sys
    import torch.distributed as dist
    from pipeline.engine.collectives import free_port
    from pipeline.launch.worker import leave
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    atexit.register(lambda: print("teardown ran", flush=True))
    print("unflushed output", end="")
    sys.stderr.write("unflushed error")
    leave(int(sys.argv[1]))
""")


def _leave(code: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(code)], capture_output=True, text=True, timeout=120)


def test_leave_keeps_the_code_and_the_output_and_skips_the_teardown():
    for code in (0, 5):  # done (the group left first), lost rank (no barrier: the peer is gone)
        proc = _leave(code)
        assert proc.returncode == code, proc.stderr
        assert proc.stdout == "unflushed output"  # flushed; the atexit handler never ran
        assert proc.stderr.endswith("unflushed error")
