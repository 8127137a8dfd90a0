"""The report's "Does the model notice?" section, and the text summary ``rsmi evaluate`` prints.

:func:`report_section` reads ``evaluation.json`` and returns the section's HTML (a table of methods per
level, the worst case, and the figure as an embedded PNG, also written to ``plots/evaluation.png``), or
``""`` when the run has not been evaluated. :func:`evaluation_figure` draws the output change against
level on a log scale for rsmi and each baseline, with the worst-case bars.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

__all__ = ["evaluation_figure", "report_section", "summary_lines"]

_CHANGE = {"kl": "KL(clean ‖ spliced), nats", "cosine": "1 − cosine with the clean embedding",
           "ce": "KL(clean ‖ spliced) per token, nats"}


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def summary_lines(result: dict) -> list[str]:
    """One line per level and method: explained variance, the metric, recovered; then the worst case."""
    metric = result["metric"]
    lines = [f"metric: {metric} ({result['model_kind']}); held-out: {result['held_out']['num_inputs']} inputs; "
             f"mean ablation {metric} = {_f(result['mean_ablation'].get(metric))}, clean = {_f(result['clean'].get(metric))}",
             f"{'level':>5} {'method':>10} {'J':>5} {'expl.var':>9} {metric:>10} {'recovered':>10}"]
    for lv in result["levels"]:
        for name, m in lv["methods"].items():
            lines.append(f"{lv['level']:>5} {name:>10} {m.get('num_latents', lv['num_latents']):>5} "
                         f"{_f(m['explained_variance'], 4):>9} {_f(m.get(metric), 4):>10} {_f(m['recovered'], 4):>10}")
        wc = lv["worst_case"]
        lines.append(f"{lv['level']:>5} worst case (norm {_f(wc['norm'])}): discarded {_f(wc['discarded'])}, kept "
                     f"{_f(wc['kept'])}, random {_f(wc['random'])}, ratio {_f(wc['ratio'])}"
                     + ("  FLAGGED: discarded directions move the output as much as kept ones" if wc["flagged"] else ""))
    return lines


def evaluation_figure(result: dict) -> bytes:
    """PNG: output change against level (log scale) per method, with the worst-case bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [lv["level"] for lv in result["levels"]]
    methods = list(result["levels"][0]["methods"]) if levels else []
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    width = 0.12
    for k, (key, colour) in enumerate((("discarded", "#d62728"), ("kept", "#2ca02c"), ("random", "#7f7f7f"))):
        vals = [max(lv["worst_case"][key], 1e-12) for lv in result["levels"]]
        ax.bar([x + (k - 1) * width for x in levels], vals, width=width, color=colour, alpha=0.35,
               label=f"worst case: {key}" if key != "random" else "random direction")
    for name in methods:
        ys = [max(lv["methods"][name]["output_change"], 1e-12) for lv in result["levels"]]
        ax.plot(levels, ys, marker="o", lw=2.2 if name == "rsmi" else 1.2, label=name,
                color="black" if name == "rsmi" else None)
    ablation = result["mean_ablation"].get("output_change")
    if ablation:
        ax.axhline(ablation, ls="--", color="#444", lw=1, label="mean ablation")
    ax.set_yscale("log")
    ax.set_xticks(levels)
    ax.set_xlabel("level")
    ax.set_ylabel(_CHANGE.get(result["metric"], "output change"))
    ax.set_title("Does the model notice? (recorded modules replaced by each level)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(result: dict) -> str:
    metric = result["metric"]
    extra = {"kl": ["agreement", "accuracy"], "cosine": ["spearman"], "ce": ["delta_ce", "kl"]}.get(metric, [])
    head = ["level", "method", "latents", "explained variance", metric, *extra, "recovered"]
    rows = []
    for lv in result["levels"]:
        best = min(lv["methods"].values(), key=lambda m: m["output_change"])["output_change"]
        for name, m in lv["methods"].items():
            cells = [str(lv["level"]), html.escape(name), str(m.get("num_latents", lv["num_latents"])),
                     _f(m["explained_variance"], 4), _f(m.get(metric), 4), *[_f(m.get(e), 4) for e in extra],
                     _f(m["recovered"], 4)]
            style = " style='font-weight:bold'" if m["output_change"] == best else ""
            rows.append(f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table>")


def _worst_table(result: dict) -> str:
    rows = []
    for lv in result["levels"]:
        wc = lv["worst_case"]
        flag = "<b>dangerously irrelevant</b>" if wc["flagged"] else "no"
        rows.append(f"<tr><td>{lv['level']}</td><td>{_f(wc['norm'])}</td><td>{_f(wc['discarded'])}</td>"
                    f"<td>{_f(wc['kept'])}</td><td>{_f(wc['random'])}</td><td>{_f(wc['ratio'])}</td><td>{flag}</td></tr>")
    head = ["level", "norm ρ", "discarded (worst)", "kept (worst)", "random", "discarded / kept", "flagged"]
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def report_section(run_dir: str | Path, plot_dir: str | Path | None = None) -> str:
    """The HTML of the section (``""`` when ``run_dir`` has no ``evaluation.json``); the figure is also written
    to ``plot_dir/evaluation.png`` (default ``run_dir/plots``)."""
    from graphs.atomic import atomic_write_bytes
    from rsmi_nn.app.evaluation.evaluate import read_evaluation

    result = read_evaluation(run_dir)
    if result is None or not result.get("levels"):
        return ""
    png = evaluation_figure(result)
    atomic_write_bytes(Path(plot_dir or Path(run_dir) / "plots") / "evaluation.png", png)
    img = f'<img alt="output change against level" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    held = result["held_out"]
    metric = result["metric"]
    note = (f"{held['num_inputs']} held-out inputs ({html.escape(str(held.get('chosen', '')))}); the recorded modules "
            f"are replaced, all at once, by a ridge least-squares decoding (λ = {result['decoder']['ridge']}) of each "
            f"method's latents. <b>{html.escape(metric)}</b>: {html.escape(_CHANGE.get(metric, metric))} is the "
            f"output change; recovered: 1 = clean model, 0 = mean ablation of the recorded modules "
            f"({html.escape(metric)} = {_f(result['mean_ablation'].get(metric))}). Bold: the method the model notices "
            "least at that level.")
    worst = ("Worst case: the largest output change from a perturbation of every activation row, of the norm ρ of "
             "the rsmi residual, confined to the directions the level's variables do not read (discarded) or do read "
             "(kept), found by projected gradient ascent; random: random directions of the same norm.")
    return "\n".join(["<h2>Does the model notice?</h2>", f"<p class='note'>{note}</p>", _table(result), img,
                      f"<p class='note'>{worst}</p>", _worst_table(result)])
