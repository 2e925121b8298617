"""The page's "Cost" tab: the cost calculator's inputs, its table and a cumulative-cost plot."""

from __future__ import annotations

import gradio as gr

from ..cost import COMPARATORS, CostInputs, comparator, compare, cumulative
from ..errors import GlmflashError

# (field, English label, Chinese label)
FIELDS = [
    ("requests_per_day", "Images per day", "每天图片数"),
    ("api_price_per_call", "Cloud API price per call", "云 API 单次价格"),
    (
        "api_price_per_million_input_tokens",
        "Cloud price per million input tokens (replaces per call)",
        "云 API 每百万输入 token 价格（取代单次价格）",
    ),
    (
        "api_price_per_million_output_tokens",
        "Cloud price per million output tokens",
        "云 API 每百万输出 token 价格",
    ),
    ("input_tokens_per_call", "Input tokens per image (prompt + image)", "每张图输入 token（提示 + 图片）"),
    ("output_tokens_per_call", "Output tokens per image", "每张图输出 token"),
    (
        "images_per_second_per_gpu",
        "Images/s per GPU: 4 is an assumption until you measure yours (glmflash bench)",
        "每块 GPU 图片/秒：4 为假设值，请用 glmflash bench 实测",
    ),
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
            against = gr.Dropdown(
                [(c.title, name) for name, c in COMPARATORS.items()], value="per-call",
                label="云 API 对比对象" if lang == "zh" else "Compare against", elem_id="cost-comparator",
            )  # fmt: skip
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

    prices = [n for n, *_ in FIELDS if n.startswith("api_price")]

    def choose(name, currency=defaults.currency):
        """A comparator's prices into the price fields (their change events redraw the rest)."""
        try:
            changes = comparator(name, currency, defaults.usd_rate)
        except GlmflashError as exc:
            gr.Warning(exc.message)
            return [gr.skip()] * len(prices)
        return [round(changes.get(n, 0.0), 6) for n in prices]  # 2.556, not 2.5559999999999996

    price_inputs = [component for (n, *_), component in zip(FIELDS, inputs, strict=True) if n in prices]
    against.change(choose, [against], price_inputs, queue=False)
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
    import matplotlib.ticker

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
    axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))  # not 1e6
    axis.legend()
    figure.tight_layout()
    plt.close(figure)
    return figure
