"""Reports and the audit CLI: what a privacy officer reads, with and without redaction."""

import re

from typer.testing import CliRunner

from fedclip.cli.main import app
from fedclip.data.records import read_metadata
from tests.audits.conftest import federated_target, pdf_pages

runner = CliRunner()


def _visible(html: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


def _pdf_images(pdf: bytes) -> int:
    return len(re.findall(rb"/Subtype\s*/Image", pdf))


def test_audit_cli_report_and_redaction(cohort, tmp_path):
    root, base, d = cohort
    target = federated_target(base, d["members"], tmp_path / "t", dp=False, epochs=2)
    audit = tmp_path / "audit"
    res = runner.invoke(app, ["--quiet", "audit", "mia", "--target", str(target), "--members", str(d["members"]),
                              "--nonmembers", str(d["nonmembers"]), "--attack", "loss", "--out", str(audit)])
    assert res.exit_code == 0, res.output
    assert "AUC" in res.output and (audit / "results.json").exists() and (audit / "scores.csv").exists()
    eps = tmp_path / "eps"
    res = runner.invoke(app, ["--quiet", "audit", "epsilon", "--checkpoint", str(base), "--data", str(d["members"]),
                              "--epsilon", "2", "--canaries", "200", "--out", str(eps)])
    assert res.exit_code == 0, res.output
    assert "ε lower bound" in res.output and "theoretical ε 1.99" in res.output and "per image" in res.output

    ids = {r.meta["patient_id"] for r in read_metadata(d["members"])}
    names = {r.filepath.rsplit("/", 1)[-1] for r in read_metadata(d["members"])}
    plain = tmp_path / "plain"
    res = runner.invoke(app, ["report", str(audit), "--out", str(plain), "--show-records"])
    assert res.exit_code == 0, res.output
    html = _visible((plain / "report.html").read_text())
    assert "What was tested" in html and "The answer" in html and "confound check" in html
    assert any(n in html for n in names)  # --show-records: the most exposed records are named and shown
    assert "CONTAINS PATIENT RECORDS" in html
    red = tmp_path / "red"
    res = runner.invoke(app, ["compare", str(audit), str(eps), "--out", str(red)])  # redacted by default
    assert res.exit_code == 0, res.output
    html = _visible((red / "report.html").read_text())
    body = html + (red / "report.json").read_text()
    assert "Models side by side" in html and "Empirical epsilon" in html
    leaked = [s for s in ids | names | {str(d["members"]), str(root)} if s in body]
    assert not leaked, leaked[:3]
    pdf, unredacted_pdf = (red / "report.pdf").read_bytes(), (plain / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and _pdf_images(unredacted_pdf) == 3  # ROC, histogram, thumbnails
    assert _pdf_images(pdf) == 4  # compare: ROC + epsilon bars; the audit: ROC + histogram; no thumbnails
    text = "".join(pdf_pages(red / "report.pdf"))  # the PDF carries real text, and no names
    assert "What was tested" in text and not [s for s in ids | names if s in text]


def test_audit_cli_errors_are_one_line(cohort, tmp_path):
    root, base, d = cohort
    target = federated_target(base, d["members"], tmp_path / "t", dp=False, epochs=1)
    res = runner.invoke(app, ["audit", "mia", "--target", str(target), "--members", str(d["members"]),
                              "--nonmembers", str(d["members"]), "--attack", "loss", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "share" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no results.json" in res.output
    res = runner.invoke(app, ["audit", "epsilon"])
    assert res.exit_code == 2 and "--run" in res.output
    res = runner.invoke(app, ["compare", str(tmp_path)])
    assert res.exit_code == 2 and "at least two" in res.output
