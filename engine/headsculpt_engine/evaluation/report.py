"""`eval`'s outputs: the scores as JSON, and one self-contained HTML page (images inline, no network at
view time) with each avatar's turntable, its prompt, the parent for edits, and a sortable table. Both are
written to a temporary file beside the target and renamed into place, so a reader never sees half a file."""
from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from pathlib import Path

COLUMNS = (("name", "Run"), ("kind", "Kind"), ("clip_score", "CLIP-Score"), ("prompt_rank", "Prompt rank"),
           ("directional_similarity", "Directional"), ("identity", "Identity"))

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>HeadSculpt evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
th {{ cursor: pointer; background: #f3f3f3; }}
.avatars {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; width: 260px; }}
figure img {{ width: 256px; height: 256px; image-rendering: pixelated; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.85em; }}
</style></head><body>
<h1>HeadSculpt evaluation</h1>
<p>CLIP model <code>{clip}</code>, {views} views per avatar. {summary}</p>
<table id="scores"><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
<div class="avatars">
{figures}
</div>
<script>
document.querySelectorAll("#scores th").forEach(function (th, column) {{
  th.addEventListener("click", function () {{
    var body = th.closest("table").tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var up = th.dataset.order !== "up";
    th.dataset.order = up ? "up" : "down";
    rows.sort(function (a, b) {{
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return up ? order : -order;
    }});
    rows.forEach(function (row) {{ body.appendChild(row); }});
  }});
}});
</script>
</body></html>
"""


def write_atomically(path: Path, text: str) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(report: dict, path: Path) -> Path:
    return write_atomically(path, json.dumps(report, indent=2) + "\n")


def _number(value) -> str:
    return "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))


def _turntable(run: dict) -> str:
    """The run's exported turntable GIF as a data URI ("" when it has none)."""
    gif = Path(run["run"]) / "result" / "turntable.gif"
    if not gif.is_file():
        return ""
    return "data:image/gif;base64," + base64.b64encode(gif.read_bytes()).decode("ascii")


def render_html(report: dict) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    rows, figures = [], []
    for run in report["runs"]:
        cells = "".join(f'<td data-value="{html.escape(_number(run[key]))}">{html.escape(_number(run[key]))}</td>'
                        for key, _ in COLUMNS)
        rows.append(f"<tr>{cells}</tr>")
        caption = f"<b>{html.escape(run['name'])}</b><br>{html.escape(run['prompt'])}"
        if run["parent"]:
            caption += (f"<br>edit of {html.escape(Path(run['parent']).name)}: "
                        f"&ldquo;{html.escape(run['instruction'] or '')}&rdquo;")
        caption += f"<br>CLIP-Score {_number(run['clip_score'])}"
        source = _turntable(run)
        image = f'<img alt="turntable of {html.escape(run["name"])}" src="{source}">' if source else "(no turntable)"
        figures.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    summary = report["summary"]
    plural = lambda count, word: f"{count} {word}{'' if count == 1 else 's'}"  # noqa: E731
    parts = [f"{plural(summary['runs'], 'avatar')} ({plural(summary['edits'], 'edit')})",
             f"mean CLIP-Score {_number(summary['clip_score'])}",
             f"CLIP R-Precision {_number(summary['r_precision'])} % over {plural(summary['prompts_ranked'], 'prompt')}"]
    if summary["directional_similarity"] is not None:
        parts += [f"mean directional similarity {_number(summary['directional_similarity'])}",
                  f"mean identity {_number(summary['identity'])}"]
    return PAGE.format(clip=html.escape(report["clip"]), views=report["views"], summary=html.escape("; ".join(parts)) + ".",
                       head=head, rows="\n".join(rows), figures="\n".join(figures))


def write_html(report: dict, path: Path) -> Path:
    return write_atomically(path, render_html(report))
