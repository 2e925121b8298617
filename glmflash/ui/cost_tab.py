"""The page's "Cost" tab: the cost calculator's inputs, its table and a cumulative-cost plot."""

from __future__ import annotations

import gradio as gr

from ..cost import CostInputs, compare, cumulative
from ..errors import GlmflashError

# (field, English label, Chinese label)
FIELDS = [
    ("requests_per_day", "Images per day", "每天图片数"),
    ("api_price_per_call", "Cloud API price per call", "云 API 单次价格"),
    ("images_per_second_per_gpu", "Measured images/s per GPU", "每块 GPU 实测图片/秒"),
    ("peak_factor", "Peak factor (peak / average)", "峰值系数（峰值/平均）"),
    ("server_price", "Server price", "服务器价格"),
    ("standby_servers", "Standby servers", "备用服务器数"),
    ("depreciation_months", "Depreciation months", "折旧月数"),
    ("electricity_price_per_kwh", "Electricity per kWh", "电价（每千瓦时）"),
    ("network_upkeep_per_month", "Network and upkeep per month", "网络与运维（每月）"),
]


def build_cost_tab(lang: str):
    """Add the tab's components to the Blocks being built."""
    defaults = CostInputs()
    column = 2 if lang == "zh" else 1
    with gr.Row():
        with gr.Column(scale=1):
            inputs = [
                gr.Number(value=getattr(defaults, f[0]), label=f[column], elem_id=f"cost-{f[0]}")
                for f in FIELDS
            ]
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="cost-table")
            plot = gr.Plot(elem_id="cost-plot")

    def update(*values):
        changes = {f[0]: v for f, v in zip(FIELDS, values, strict=True) if v is not None}
        if "standby_servers" in changes:
            changes["standby_servers"] = int(changes["standby_servers"])
        try:
            result = compare(**changes)
        except GlmflashError as exc:
            gr.Warning(exc.message)
            return gr.skip(), gr.skip()
        return markdown_table(result), cost_plot(result)

    for component in inputs:
        component.change(update, inputs, [summary, plot], queue=False)
    return inputs, summary, plot, update


def markdown_table(result) -> str:
    c = result.inputs["currency"]
    a, s, cap = result.api, result.self_hosted, result.capacity
    rows = [("per day", "per_day"), ("per month (30 days)", "per_month"), ("per year", "per_year"),
            ("per 1,000 images", "per_1000_images")]  # fmt: skip
    lines = ["| | cloud API | self-hosted |", "|---|---:|---:|"]
    lines += [f"| {label} | {a[key]:,.2f} {c} | {s[key]:,.2f} {c} |" for label, key in rows]
    even = result.break_even_month
    lines.append("")
    lines.append(f"**Break-even:** {even:.1f} months" if even is not None else "**Never breaks even.**")
    lines.append(
        f"**Capacity:** peak {cap['peak_images_per_s']:.2f} images/s needs {cap['gpus_needed']} GPU(s) in "
        f"{s['servers']} server(s); headroom {cap['headroom']:+.0%}."
    )
    return "\n\n".join(["\n".join(lines[:6]), *lines[7:]])


def cost_plot(result, months: int = 36):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cumulative(result, months)
    figure, axis = plt.subplots(figsize=(7, 3.6))
    axis.plot([r[0] for r in rows], [r[1] for r in rows], label="cloud API")
    axis.plot([r[0] for r in rows], [r[2] for r in rows], label="self-hosted (hardware + running)")
    even = result.break_even_month
    if even is not None and even <= months:
        axis.axvline(even, color="gray", linestyle="--")
        axis.annotate(
            f"break-even {even:.1f} mo", (even, rows[-1][2]), xytext=(5, 5), textcoords="offset points"
        )
    axis.set_xlabel("months")
    axis.set_ylabel(f"cumulative cost ({result.inputs['currency']})")
    axis.legend()
    figure.tight_layout()
    plt.close(figure)
    return figure
