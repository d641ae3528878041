"""`ProgressMeter`: reports at the start, once an interval has passed, and at the end, on
an injected clock; `ChunkProgress.line` is the text every renderer shows."""

from recon_pipeline.engine.progress import ChunkProgress, ProgressMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_meter_reports_at_most_once_per_interval_and_at_the_end() -> None:
    clock, seen = Clock(), list[ChunkProgress]()
    meter = ProgressMeter("clients_0", 1000, seen.append, interval=10.0, clock=clock)
    for step in range(10):  # a batch of 100 rows every 3 s
        clock.now += 3.0
        meter.read(100, mismatches=step)
    meter.finish(1000, mismatches=10)
    assert [(p.rows, p.mismatches, p.seconds, p.done) for p in seen] == [
        (0, 0, 0.0, False), (400, 3, 12.0, False), (800, 7, 24.0, False),
        (1000, 10, 30.0, True)]
    # the first line's span holds the start-up; the next: 400 rows in 12 s, 200 left
    assert [p.seconds_left for p in seen] == [None, None, 6.0, 0.0]
    assert seen[-1].total == 1000


def test_a_line_says_rows_rate_mismatches_and_time_left() -> None:
    running = ChunkProgress("incoming_emails_0", 120_000, 200_000, True, 3, 3.0, False, 2.4)
    assert running.line() == ("chunk incoming_emails_0: 120,000/~200,000 rows, "
                              "40,000 rows/s, 3 mismatches, ~2s left")
    unknown = ChunkProgress("clients_0", 5000, None, False, 0, 2.0, False)
    assert unknown.line().endswith("2,500 rows/s, 0 mismatches, time left unknown")
    done = ChunkProgress("clients_0", 5000, 5000, False, 1, 2.0, True)
    assert done.line() == ("chunk clients_0: 5,000/5,000 rows, 2,500 rows/s, "
                           "1 mismatches, done in 2.0s")
    assert ChunkProgress.from_dict(done.as_dict()) == done
