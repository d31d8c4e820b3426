"""The report as a document: sections of paragraphs, tables and figures, written as self-contained HTML and
as a PDF with real text and tables (fpdf2). Knows nothing about audits.

A report that names patients carries a banner on every PDF page and at the top of the HTML, so a printed
page cannot be mistaken for a redacted one.
"""

from __future__ import annotations

import base64
import html
import io as stdio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
RECORDS_BANNER = "CONTAINS PATIENT RECORDS (ids, file names, images): do not share outside the data controller"


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # caption, header, rows
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # caption, PNG
    new_page: bool = False  # the PDF starts this section on a fresh page (the sign-off page)


def figure_png(fig: Any) -> bytes:
    buf = stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def to_html(title: str, sections: list[Section], banner: str | None = None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "td,th{border:1px solid #bbb;padding:0.25em 0.6em;text-align:left}"
             "th{background:#eee}figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}"
             ".banner{position:sticky;top:0;background:#b00;color:#fff;padding:0.4em;font-weight:bold}"
             "</style></head><body>"]
    if banner:
        parts.append(f"<div class='banner'>{html.escape(banner)}</div>")
    parts.append(f"<h1>{html.escape(title)}</h1>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        for caption, header, rows in s.tables:
            parts.append(f"<table><caption>{html.escape(caption)}</caption><tr>"
                         + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
        for caption, png in s.figures:
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
                         f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_pdf(title: str, sections: list[Section], banner: str | None = None) -> bytes:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    class Pdf(FPDF):
        def header(self) -> None:
            if banner:
                self.set_font("DejaVu", "B", 8)
                self.set_fill_color(176, 0, 0)
                self.set_text_color(255, 255, 255)
                self.cell(0, 6, banner, fill=True, new_x="LMARGIN", new_y="NEXT")
                self.set_text_color(0, 0, 0)
                self.ln(1)

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("DejaVu", "", 7)
            self.cell(0, 5, f"{title} — page {self.page_no()}/{{nb}}", align="C")

    pdf = Pdf(format="A4")
    pdf.set_creation_date(datetime(2000, 1, 1, tzinfo=UTC))  # the bytes depend on the content only
    pdf.add_font("DejaVu", "", str(FONT / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(FONT / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(True, 15)
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.multi_cell(0, 9, title, new_x="LMARGIN", new_y="NEXT")
    for s in sections:
        if s.new_page:
            pdf.add_page()
        pdf.set_font("DejaVu", "B", 12)
        pdf.ln(2)
        pdf.multi_cell(0, 7, s.title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 9)
        for p in s.paragraphs:
            pdf.multi_cell(0, 4.6, p, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        for caption, header, rows in s.tables:
            pdf.set_font("DejaVu", "B", 8)
            pdf.multi_cell(0, 4.5, caption, new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("DejaVu", "", 7)
            with pdf.table(headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)),
                           line_height=4, text_align="LEFT") as table:
                table.row(header)
                for r in rows:
                    table.row([str(c) for c in r])
            pdf.ln(2)
        for caption, png in s.figures:
            with Image.open(stdio.BytesIO(png)) as im:
                w, h = im.size
            width = min(120.0, 180.0 * w / max(w, 1) if w < 900 else 180.0)
            if pdf.get_y() + width * h / w > pdf.h - 20:
                pdf.add_page()
            pdf.image(stdio.BytesIO(png), w=width)
            pdf.set_font("DejaVu", "", 7)
            pdf.multi_cell(0, 4, caption, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    return bytes(pdf.output())
