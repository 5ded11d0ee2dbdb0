"""``warta report`` (one self-contained HTML page about the lake) and ``warta stats`` (the key numbers as text).

Numbers come from :mod:`lake.metrics`; charts are Plotly figures, with plotly.js inlined once, so the page opens
offline. The metrics behind the charts are embedded as JSON (``<script id="warta-metrics">``) for anyone who wants
to reuse them.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime
from pathlib import Path

import fsspec

from warta.lake.metrics import Metrics, collect
from warta.pipeline.command import Exit, command, command_parser, lake_or_exit, settings_or_exit, start_logging
from warta.pipeline.exits import EXIT_CONFIG, EXIT_OK

LABELS = ("PER", "LOC", "ORG")
LABEL_COLORS = {"PER": "#4c78a8", "LOC": "#54a24b", "ORG": "#e45756"}
STAGE_COLORS = {"poll": "#b279a2", "robots": "#9d755d", "fetch": "#e45756", "extract": "#f58518",
                "ner": "#72b7b2", "write": "#4c78a8"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
TEMPLATES = Path(__file__).resolve().parent / "templates"


def parser(prog: str, about: str) -> argparse.ArgumentParser:
    p = command_parser(prog, about)
    p.add_argument("--output", required=True, help="the lake: a local path or any fsspec URL")
    p.add_argument("--days", type=int, default=7, help="length of the window in days (default 7)")
    p.add_argument("--until", type=date.fromisoformat, default=None,
                   help="last article day of the window, YYYY-MM-DD (default: the latest day with articles)")
    p.add_argument("--with-copies", action="store_true",
                   help="count syndicated copies (rows with duplicate_of) in the entity counts too "
                        "(default: one story counts once)")
    p.add_argument("--config", default=None, help="settings YAML (for storage_options)")
    return p


def parse_and_load(p: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, Metrics]:
    """(namespace, metrics); exit 2 when the flags or the lake are unusable."""
    ns = p.parse_args(argv)
    start_logging(ns)
    if ns.days < 1:
        raise Exit(EXIT_CONFIG, "--days must be at least 1")
    settings = settings_or_exit(ns.config)
    lake_or_exit(ns.output, settings)
    return ns, collect(ns.output, settings.storage_options, ns.days, ns.until, copies=ns.with_copies)


# -- figures --------------------------------------------------------------------------------------
def _html(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG)


def per_day_figure(m: Metrics):
    """Heatmap outlet x day; days without articles are zero cells in a colour of their own."""
    import plotly.graph_objects as go
    days = m.window.day_list()
    counts = {(r["source"], r["day"]): r["articles"] for r in m.articles_per_day}
    z = [[counts.get((s, d), 0) for d in days] for s in m.outlets]
    top = max((v for row in z for v in row), default=0) or 1
    fig = go.Figure(go.Heatmap(
        x=[d.isoformat() for d in days], y=m.outlets, z=z, zmin=0, zmax=top, xgap=2, ygap=2,
        colorscale=[[0, "#f2b8b5"], [0.5 / top, "#f2b8b5"], [0.5 / top, "#deebf7"], [1, "#08519c"]],
        text=z, texttemplate="%{text}" if len(days) <= 31 else None, colorbar={"title": {"text": "articles"}},
        hovertemplate="%{y}<br>%{x}: %{z} articles<extra></extra>"))
    fig.update_layout(height=140 + 26 * max(len(m.outlets), 1), margin={"l": 10, "r": 10, "t": 10, "b": 40},
                      yaxis={"autorange": "reversed", "type": "category"}, xaxis={"type": "category"})
    return fig


def errors_figure(m: Metrics):
    """Errors of the operations window: per outlet by stage, and per stage by HTTP status."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=("errors per outlet, by stage", "errors by HTTP status"))
    stages = sorted({r["stage"] for r in m.errors_by_stage}, key=lambda s: (s not in STAGE_COLORS, s))
    for stage in stages:
        rows = [r for r in m.errors_by_stage if r["stage"] == stage]
        fig.add_trace(go.Bar(y=[r["source"] or "?" for r in rows], x=[r["n"] for r in rows], name=stage,
                             orientation="h", marker_color=STAGE_COLORS.get(stage), legendgroup=stage), 1, 1)
        rows = [r for r in m.errors_by_status if r["stage"] == stage]
        fig.add_trace(go.Bar(x=[r["status"] for r in rows], y=[r["n"] for r in rows], name=stage,
                             marker_color=STAGE_COLORS.get(stage), legendgroup=stage, showlegend=False), 1, 2)
    totals: dict[str, int] = {}
    for r in m.errors_by_stage:
        totals[r["source"] or "?"] = totals.get(r["source"] or "?", 0) + r["n"]
    sources = sorted(totals, key=lambda s: (-totals[s], s))  # most errors on top
    fig.update_layout(barmode="stack", height=160 + 24 * max(len(sources), 4),
                      margin={"l": 10, "r": 10, "t": 40, "b": 40}, legend={"title": {"text": "stage"}})
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=sources, autorange="reversed", row=1, col=1)
    fig.update_xaxes(type="category", title_text="HTTP status", row=1, col=2)
    return fig


def syndication_figure(m: Metrics):
    import plotly.graph_objects as go
    pairs = m.syndication["pairs"]
    copiers = sorted({p["copier"] for p in pairs})
    originals = sorted({p["original"] for p in pairs})
    counts = {(p["copier"], p["original"]): p["copies"] for p in pairs}
    fig = go.Figure(go.Heatmap(
        x=originals, y=copiers, z=[[counts.get((c, o)) for o in originals] for c in copiers],
        colorscale="Oranges", xgap=2, ygap=2, texttemplate="%{z}", colorbar={"title": {"text": "copies"}},
        hovertemplate="%{y} ran %{z} copies of %{x}<extra></extra>"))
    fig.update_layout(height=200 + 22 * len(copiers), margin={"l": 10, "r": 10, "t": 10, "b": 40},
                      xaxis={"title": {"text": "original outlet"}, "type": "category"},
                      yaxis={"title": {"text": "copying outlet"}, "type": "category", "autorange": "reversed"})
    return fig


def entities_figure(m: Metrics, language: str):
    """Top entities per label and the most rising ones, for one language."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.3, vertical_spacing=0.14,
                        subplot_titles=[f"top {label}" for label in LABELS] + ["rising vs previous window"])
    for i, label in enumerate(LABELS):
        rows = [r for r in m.entities["top"] if r["language"] == language and r["label"] == label]
        fig.add_trace(go.Bar(y=[r["text"] for r in rows], x=[r["articles"] for r in rows], orientation="h",
                             marker_color=LABEL_COLORS[label], name=label, showlegend=False,
                             hovertemplate="%{y}: %{x} articles<extra></extra>"), i // 2 + 1, i % 2 + 1)
    rising = [r for r in m.entities["rising"] if r["language"] == language]
    fig.add_trace(go.Bar(y=[f"{r['text']} ({r['label']})" for r in rising], x=[r["rise"] for r in rising],
                         orientation="h", marker_color=[LABEL_COLORS.get(r["label"], "#888") for r in rising],
                         customdata=[[r["previous"], r["articles"]] for r in rising], showlegend=False,
                         hovertemplate="%{y}: %{customdata[0]} → %{customdata[1]} articles<extra></extra>"), 2, 2)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(height=640, margin={"l": 200, "r": 10, "t": 40, "b": 30})
    return fig


def runs_figure(m: Metrics):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    x = [f"{r['started_at'] or r['committed_at']:%m-%d %H:%M:%S}" for r in m.runs]  # a slot per run, not a time axis
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=x, y=[r["articles"] for r in m.runs], name="articles written", marker_color="#4c78a8"))
    fig.add_trace(go.Bar(x=x, y=[r["errors"] for r in m.runs], name="errors", marker_color="#e45756"))
    if any(r["entries_pending"] for r in m.runs):
        fig.add_trace(go.Bar(x=x, y=[r["entries_pending"] for r in m.runs], name="entries pending",
                             marker_color="#f58518"))
    fig.add_trace(go.Scatter(x=x, y=[r["seconds"] for r in m.runs], name="duration (s)", mode="lines+markers",
                             line={"color": "#222"}, customdata=[r["run_id"] for r in m.runs],
                             hovertemplate="%{customdata}: %{y} s<extra></extra>"), secondary_y=True)
    fig.update_xaxes(type="category")
    fig.update_layout(barmode="group", height=340, margin={"l": 10, "r": 10, "t": 10, "b": 40},
                      legend={"orientation": "h", "y": 1.12})
    fig.update_yaxes(title_text="rows per run", secondary_y=False)
    fig.update_yaxes(title_text="seconds", secondary_y=True, rangemode="tozero")
    return fig


# -- the page --------------------------------------------------------------------------------------
def when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC") if t else "unknown"


def render(m: Metrics) -> str:
    import jinja2
    from plotly.offline import get_plotlyjs
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = when
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.0f} %"
    languages = sorted({r["language"] for r in m.entities["top"]})
    figures = {"per_day": _html(per_day_figure(m)),
               "errors": _html(errors_figure(m)) if m.errors_by_stage else "",
               "syndication": _html(syndication_figure(m)) if m.syndication["pairs"] else "",
               "entities": {lang: _html(entities_figure(m, lang)) for lang in languages},
               "runs": _html(runs_figure(m)) if m.runs else ""}
    return env.get_template("report.html.j2").render(
        m=m, figures=figures, key=key_numbers(m), plotly_js=get_plotlyjs(), untagged=untagged_line(m),
        metrics_json=script_safe_json(m.to_json()))


def script_safe_json(text: str) -> str:
    """JSON to embed in a ``<script>`` element: ``<``, ``>``, ``&`` and the line separators as ``\\u`` escapes
    (still the same JSON), so no ``</script>``, ``<!--`` or ``<script`` in the data can end or reopen it."""
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


@command("warta report")
def report(argv: list[str]) -> int:
    p = parser("warta report", "Write one self-contained HTML page about the lake (opens offline).")
    p.add_argument("--to", default="report.html", help="where to write the page (path or fsspec URL; "
                                                         "default: report.html in the current folder)")
    ns, m = parse_and_load(p, argv)
    page = render(m)
    try:
        with fsspec.open(ns.to, "w", encoding="utf-8") as fh:
            fh.write(page)
    except (OSError, ValueError) as e:  # no such folder, no permission, unknown protocol
        raise Exit(EXIT_CONFIG, f"cannot write {ns.to}: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
                   ) from None
    print(f"warta report: {ns.to} ({m.window.content_start} – {m.window.content_end})", file=sys.stderr)
    return EXIT_OK


def untagged_line(m: Metrics) -> str:
    """"N articles without entities (no model for en, pt)"."""
    n = sum(r["articles"] for r in m.untagged["per_language"])
    line = f"{n} article{'s' * (n != 1)} without entities"
    if m.untagged["no_model"]:
        line += f" (no model for {', '.join(m.untagged['no_model'])})"
    return line


# -- the table -------------------------------------------------------------------------------------
def key_numbers(m: Metrics) -> list[tuple[str, str]]:
    """(name, value) pairs shared by the page's summary and ``warta stats``."""
    w = m.window
    total = sum(r["articles"] for r in m.articles_per_day)
    delivering = {r["source"] for r in m.articles_per_day}
    gaps = len(m.outlets) * w.days - len(m.articles_per_day)
    failing = [r for r in m.feed_health if r["failing"]]
    errors = {}
    for r in m.errors_by_stage:
        errors[r["stage"]] = errors.get(r["stage"], 0) + r["n"]
    syn = m.syndication
    rows = [
        ("articles window", f"{w.content_start} – {w.content_end} ({w.days} days, by article day)"),
        ("operations window", f"{when(w.ops_start)} – {when(w.ops_end)}"),
        ("articles", str(total)),
        ("outlets with articles", f"{len(delivering)} of {len(m.outlets)}"),
        ("outlet-days without articles", str(gaps)),
        ("syndicated copies", f"{syn['copies']}" + (f" ({100 * syn['copies'] / syn['articles']:.1f} %)"
                                                     if syn["articles"] else "")),
        ("feeds failing", f"{len(failing)} of {len(m.feed_health)}"
         + (f" ({', '.join(sorted(r['source'] or r['feed_url'] for r in failing))})" if failing else "")),
        ("errors by stage", ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"),
        ("robots refusals", str(errors.get("robots", 0))),
        ("entries pending", str(sum(r["pending"] for r in m.feed_health))),
    ]
    copies = "copies included" if m.copies_counted else "copies excluded"
    for label in LABELS:
        top = [r for r in m.entities["top"] if r["label"] == label]
        top.sort(key=lambda r: (-r["articles"], r["text"]))
        rows.append((f"top {label} ({copies})", ", ".join(f"{r['text']} ({r['articles']})" for r in top[:3]) or "none"))
    rows.append(("untagged", untagged_line(m)))
    if m.runs:
        last = m.runs[-1]
        rows += [("runs in window", str(len(m.runs))),
                 ("last run", f"{last['run_id']} · {last['seconds']} s · articles {last['articles']} · "
                              f"errors {last['errors']}")]
    else:
        rows.append(("runs in window", "0"))
    return rows


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
    body = ([header] if header else []) + rows
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    lines = ["  ".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip() for r in body]
    if header:
        lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def outlet_rows(m: Metrics) -> list[tuple[str, ...]]:
    per = {}
    for r in m.articles_per_day:
        per.setdefault(r["source"], []).append(r)
    health = {}
    for r in m.feed_health:
        health.setdefault(r["source"], []).append(r)
    out = []
    for s in m.outlets:
        days = per.get(s, [])
        feeds = health.get(s, [])
        status = ",".join(sorted({f["last_status"] or "?" for f in feeds})) or "?"
        errors = sum(f["entry_errors"] + f["poll_failures"] for f in feeds)
        out.append((s, str(sum(d["articles"] for d in days)), str(m.window.days - len(days)),
                    str(max(d["day"] for d in days)) if days else "–", status, str(errors)))
    return out


@command("warta stats")
def stats(argv: list[str]) -> int:
    p = parser("warta stats", "Print the lake's key numbers as a plain table (for terminals and cron mail).")
    _, m = parse_and_load(p, argv)
    print(f"warta stats: {m.lake}\n")
    print(table(key_numbers(m)))
    if m.outlets:
        print()
        print(table(outlet_rows(m), ("outlet", "articles", "days without", "last day", "feed status", "errors")))
    return EXIT_OK
