from pipeline.data.progress import Progress


def test_lines_come_at_most_every_interval_with_rate_and_eta_and_a_last_one():
    now = [0.0]
    logs: list[str] = []
    p = Progress("tokenising", 3_000_000, logs.append, every_s=10, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 5
        p.tick(500_000)
    assert logs == ["tokenising [########----------------]  33% 1.0M/3.0M pairs, 100.0K pairs/s, ETA 0m20s"]
    now[0] += 1
    p.tick(1_000_000)  # 2.5M at 16 s: within the interval, no line
    p.close()  # but the end is shown
    assert logs[1:] == ["tokenising [####################----]  83% 2.5M/3.0M pairs, 156.2K pairs/s, ETA 0m03s"]
    p.close()
    assert len(logs) == 2


def test_short_work_writes_nothing():
    logs: list[str] = []
    p = Progress("x", 10, logs.append, every_s=10, clock=lambda: 0.0)
    p.tick(10)
    p.close()
    assert logs == []
