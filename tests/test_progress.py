"""Progress where users read it: plain periodic lines in a log file, nothing for work that is not done."""

from fedclip import progress


def test_a_log_file_gets_plain_lines_and_empty_work_gets_no_bar(monkeypatch, capsys):
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    progress.enable(True)
    try:
        with progress.progress_bar("pretrain", 4) as advance:  # pytest's stderr is not a terminal
            for _ in range(4):
                advance(loss=1.5)
        with progress.progress_bar("reference models", 0) as advance:
            advance()
    finally:
        progress.enable(False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("pretrain 1/4 (25%) 00:00:0") and lines[0].endswith("loss 1.5")
    assert lines[-1].startswith("pretrain 4/4 (100%)") and not any("reference" in line for line in lines)
