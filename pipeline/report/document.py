"""A report as plain blocks (paragraphs, tables, figures) under headed sections, rendered to
Markdown (figures linked) and to one self-contained HTML page (figures embedded, no request to
any network when it is opened). Both renderings come from the same blocks, so they agree."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    path: str  # relative to the report's folder
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


@dataclass
class Document:
    title: str
    lead: list[str]
    sections: list[Section]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    out += [p + "\n" for p in doc.lead]
    for sec in doc.sections:
        out += [f"## {sec.title}", ""]
        for b in sec.blocks:
            if isinstance(b, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                out.append("|" + "---|" * len(b.header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
                out.append("")
            elif isinstance(b, Figure):
                out += [f"![{b.caption}]({b.path})", "", f"*{b.caption}*", ""]
            else:
                out += [b, ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1d1d1f}
h1{font-size:1.6em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:.25em .6em;text-align:right}
th{background:#f4f4f6} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em} code{background:#f4f4f6;padding:0 .25em}
.fail{color:#b00020;font-weight:600} .pass{color:#1b7f3b;font-weight:600}
nav{background:#f8f8fa;padding:.5em 1em;border:1px solid #eee}
"""


def _inline(text: str) -> str:
    """Escape, then keep the few Markdown marks the report uses: `code` and **bold**."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    t = t.replace("<strong>FAIL</strong>", '<span class="fail">FAIL</span>')
    return t.replace("PASSED", '<span class="pass">PASSED</span>').replace(
        "FAILED", '<span class="fail">FAILED</span>'
    )


def _img(folder: Path, rel: str) -> str:
    data = base64.b64encode((folder / rel).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def to_html(doc: Document, folder: Path) -> str:
    """One HTML file; every figure is read from `folder` and embedded as a data URI."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_inline(doc.title)}</h1>",
    ]
    parts += [f"<p>{_inline(p)}</p>" for p in doc.lead]
    parts.append(
        "<nav>"
        + " &middot; ".join(
            f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(doc.sections)
        )
        + "</nav>"
    )
    for i, sec in enumerate(doc.sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(sec.title)}</h2>")
        for b in sec.blocks:
            if isinstance(b, Table):
                head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                    for row in b.rows
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(b, Figure):
                parts.append(
                    f"<figure><img alt='{html.escape(b.caption)}' src='{_img(folder, b.path)}'>"
                    f"<figcaption>{_inline(b.caption)}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{_inline(b)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
