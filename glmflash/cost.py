"""What image understanding costs: a per-call cloud API against running GLM-4.6V-Flash yourself.

Pure arithmetic, every input named and explained (see `CostInputs`). Money is in `currency`;
a month is 30 days and a year 365 days for the API (it bills per call), 12 months for hardware
and running costs. Break-even is the cash view: the hardware is paid on day one, then each month
costs its running costs; the API costs its monthly bill. Defaults reproduce the worked example:
0.01 CNY a call x 100,000 images a day = 1,000 a day, 30,000 a month, 365,000 a year; one
15,000 CNY server over 36 months = ~417 a month, plus 500 a month for power, network and upkeep.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from .errors import InvalidRequestError

DAYS_PER_MONTH = 30
DAYS_PER_YEAR = 365


@dataclass(frozen=True)
class CostInputs:
    """Everything the comparison depends on; each field's metadata["help"] explains it."""

    requests_per_day: float = field(default=100_000, metadata={"help": "images sent per day"})
    api_price_per_call: float = field(default=0.01, metadata={"help": "cloud price per image request"})
    api_price_per_million_input_tokens: float = field(
        default=0.0,
        metadata={"help": "cloud price per million prompt+image tokens; replaces the per-call price"},
    )
    api_price_per_million_output_tokens: float = field(
        default=0.0,
        metadata={"help": "cloud price per million answer tokens; replaces the per-call price"},
    )
    input_tokens_per_call: float = field(
        default=1_400, metadata={"help": "prompt + image tokens per request (per-token pricing)"}
    )
    output_tokens_per_call: float = field(
        default=200, metadata={"help": "answer tokens per request (per-token pricing)"}
    )
    peak_factor: float = field(default=3.0, metadata={"help": "busiest hour's rate / the day's average rate"})
    images_per_second_per_gpu: float = field(
        default=4.0, metadata={"help": "measured throughput for this workload (see --bench)"}
    )
    gpus_per_server: int = field(default=1, metadata={"help": "gpus_per_server"})
    server_price: float = field(default=15_000, metadata={"help": "purchase price per server"})
    standby_servers: int = field(default=0, metadata={"help": "spare machines bought on top of those needed"})
    depreciation_months: float = field(default=36, metadata={"help": "depreciation_months"})
    load_watts: float = field(default=400, metadata={"help": "per server while generating"})
    idle_watts: float = field(
        default=100, metadata={"help": "per server while waiting (standby machines always)"}
    )
    load_hours_per_day: float = field(default=12, metadata={"help": "load_hours_per_day"})
    electricity_price_per_kwh: float = field(default=1.0, metadata={"help": "electricity_price_per_kwh"})
    network_upkeep_per_month: float = field(
        default=320, metadata={"help": "network, rack, maintenance per month, all servers"}
    )
    currency: str = field(default="CNY", metadata={"help": "the currency all prices are in"})
    usd_rate: float = field(
        default=7.1,
        metadata={
            "help": "units of `currency` per US dollar, for comparators priced in dollars (check today's)"
        },
    )

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "currency":
                if not isinstance(value, str) or not value.strip():
                    raise InvalidRequestError("currency must be a name such as CNY.", param="currency")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidRequestError(f"{f.name} must be a number, got {value!r}.", param=f.name)
            if value < 0:
                raise InvalidRequestError(f"{f.name} cannot be negative ({value}).", param=f.name)
        positive = ("requests_per_day", "peak_factor", "images_per_second_per_gpu", "gpus_per_server",
                    "depreciation_months")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise InvalidRequestError(f"{name} must be above zero.", param=name)
        if self.peak_factor < 1:
            raise InvalidRequestError("peak_factor is peak / average, so at least 1.", param="peak_factor")
        if self.load_hours_per_day > 24:
            raise InvalidRequestError("load_hours_per_day is at most 24.", param="load_hours_per_day")
        if self.requests_per_day > 1e10 or self.server_price > 1e9 or self.api_price_per_call > 1e6:
            raise InvalidRequestError("These inputs are out of any realistic range: check the units.")


@dataclass(frozen=True)
class Comparator:
    """A cloud API a team pays today, priced as its provider lists it (`usd`: prices in US
    dollars, converted with CostInputs.usd_rate), with where and when the price was read."""

    title: str
    prices: dict  # CostInputs price fields
    usd: bool
    source: str


COMPARATORS = {
    "per-call": Comparator(
        "A per-call cloud API at 0.01 a call (Volcano Engine's 0.01 CNY, the worked example)",
        {
            "api_price_per_call": 0.01,
            "api_price_per_million_input_tokens": 0.0,
            "api_price_per_million_output_tokens": 0.0,
        },
        usd=False,
        source="the project's worked example (a published per-call price of 0.01 CNY)",
    ),
    "glm-4.6v-flashx": Comparator(
        "GLM-4.6V-FlashX (Z.ai's paid 9B vision model): $0.06 / $0.36 per million input / output tokens",
        {"api_price_per_million_input_tokens": 0.06, "api_price_per_million_output_tokens": 0.36},
        usd=True,
        source="list price seen 2026-12-04 at therouter.ai/models/zhipu--glm-4.6v-flashx (a reseller "
        "quoting Z.ai's price); check Z.ai's own pricing page before quoting",
    ),
    "glm-4.6v": Comparator(
        "GLM-4.6V (Z.ai's 106B vision model): about $0.30 / $0.90 per million input / output tokens",
        {"api_price_per_million_input_tokens": 0.30, "api_price_per_million_output_tokens": 0.90},
        usd=True,
        source="list price seen 2026-12-04 at neuralhub.xyz/dashboard/models/z-ai/glm-4.6v (one reseller, "
        "therouter.ai, lists $0.336 / $1.68); check Z.ai's own pricing page before quoting",
    ),
}
# The GLM-4.6V-Flash API itself is free (input and output), so it is no comparator.


def comparator(name: str, currency: str = "CNY", usd_rate: float = CostInputs.usd_rate) -> dict:
    """The CostInputs changes that price the API as comparator `name`, in `currency` (dollar
    prices converted at `usd_rate` units of it per dollar, unless it is USD)."""
    if name not in COMPARATORS:
        raise InvalidRequestError(
            f"Unknown comparator {name!r}: choose one of {', '.join(COMPARATORS)}.", param="comparator"
        )
    preset = COMPARATORS[name]
    rate = usd_rate if preset.usd and currency.strip().upper() != "USD" else 1.0
    changes = {key: value * rate for key, value in preset.prices.items()}
    if "api_price_per_call" not in changes:
        changes["api_price_per_call"] = 0.0  # per-token pricing replaces it
    return changes


def usage_from_results(path: str) -> dict:
    """Mean prompt and answer tokens per request, measured: from a batch job's results or an
    eval run's items.jsonl (every record with `usage`). The mean, not the median: a bill adds up."""
    prompts, answers = [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    usage = json.loads(line).get("usage") or {}
                except (ValueError, AttributeError):
                    continue
                if isinstance(usage, dict) and all(
                    isinstance(usage.get(k), (int, float)) for k in ("prompt_tokens", "completion_tokens")
                ):
                    prompts.append(usage["prompt_tokens"])
                    answers.append(usage["completion_tokens"])
    except OSError as exc:
        raise InvalidRequestError(f"Cannot read {path}: {exc.strerror}.", param="usage") from None
    if not prompts:
        raise InvalidRequestError(
            f"{path} has no records with usage (prompt and completion tokens).", param="usage"
        )
    return {
        "input_tokens_per_call": sum(prompts) / len(prompts),
        "output_tokens_per_call": sum(answers) / len(answers),
    }


@dataclass(frozen=True)
class CostResult:
    inputs: dict
    api: dict  # per_call, per_day, per_month, per_year, per_1000_images
    self_hosted: dict  # hardware, depreciation/power/upkeep per month, per_day/month/year, per_1000
    capacity: dict  # peak images/s, gpus and servers needed, fleet capacity, headroom, keeps_up
    break_even_month: float | None
    savings_by_year: dict  # years 1..5: cumulative API cost - cumulative self-hosted cash cost

    def to_dict(self) -> dict:
        return asdict(self)


def compare(inputs: CostInputs | None = None, **changes) -> CostResult:
    """Run the comparison for `inputs` (defaults, with `changes` applied)."""
    base = asdict(inputs or CostInputs())
    unknown = set(changes) - set(base)
    if unknown:
        raise InvalidRequestError(
            f"Unknown cost input: {', '.join(sorted(unknown))}.", param=sorted(unknown)[0]
        )
    x = CostInputs(**{**base, **changes})
    per_call = api_cost_per_call(x)
    api_month = per_call * x.requests_per_day * DAYS_PER_MONTH
    api = {
        "per_call": per_call,
        "per_day": per_call * x.requests_per_day,
        "per_month": api_month,
        "per_year": per_call * x.requests_per_day * DAYS_PER_YEAR,
        "per_1000_images": per_call * 1000,
    }
    capacity = fleet(x)
    servers = capacity["servers_needed"]
    hardware = (servers + x.standby_servers) * x.server_price
    server_wh = x.load_watts * x.load_hours_per_day + x.idle_watts * (24 - x.load_hours_per_day)
    kwh_per_day = (servers * server_wh + x.standby_servers * x.idle_watts * 24) / 1000
    power = kwh_per_day * DAYS_PER_MONTH * x.electricity_price_per_kwh
    depreciation = hardware / x.depreciation_months
    running = power + x.network_upkeep_per_month
    month = depreciation + running
    self_hosted = {
        "servers": servers + x.standby_servers,
        "hardware": hardware,
        "depreciation_per_month": depreciation,
        "power_per_month": power,
        "network_upkeep_per_month": x.network_upkeep_per_month,
        "per_month": month,
        "per_day": month / DAYS_PER_MONTH,
        "per_year": month * 12,
        "per_1000_images": month / (x.requests_per_day * DAYS_PER_MONTH) * 1000,
    }
    saving_per_month = api_month - running
    break_even = hardware / saving_per_month if saving_per_month > 0 else None
    savings = {year: api_month * 12 * year - (hardware + running * 12 * year) for year in range(1, 6)}
    return CostResult(asdict(x), api, self_hosted, capacity, break_even, savings)


def api_cost_per_call(x: CostInputs) -> float:
    if x.api_price_per_million_input_tokens or x.api_price_per_million_output_tokens:
        return (x.input_tokens_per_call * x.api_price_per_million_input_tokens
                + x.output_tokens_per_call * x.api_price_per_million_output_tokens) / 1e6  # fmt: skip
    return x.api_price_per_call


def fleet(x: CostInputs) -> dict:
    peak = x.requests_per_day / 86_400 * x.peak_factor
    gpus = max(1, math.ceil(peak / x.images_per_second_per_gpu - 1e-9))
    servers = math.ceil(gpus / x.gpus_per_server)
    capacity = servers * x.gpus_per_server * x.images_per_second_per_gpu
    return {
        "average_images_per_s": x.requests_per_day / 86_400,
        "peak_images_per_s": peak,
        "gpus_needed": gpus,
        "servers_needed": servers,
        "capacity_images_per_s": capacity,
        "headroom": capacity / peak - 1,
        "keeps_up": capacity >= peak,
    }


def cumulative(result: CostResult, months: int = 36) -> list[tuple[int, float, float]]:
    """(month, cumulative API cost, cumulative self-hosted cash cost) for months 0..months."""
    api, s = result.api["per_month"], result.self_hosted
    running = s["power_per_month"] + s["network_upkeep_per_month"]
    return [(m, api * m, s["hardware"] + running * m) for m in range(months + 1)]


def throughput_from_bench(path: str) -> float:
    """Images/s per GPU from a benchmark JSON: `images_per_s`, or the best `requests_per_s` level."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"Cannot read the benchmark file {path}: {exc}", param="bench") from None
    if isinstance(data.get("images_per_s"), (int, float)):
        return float(data["images_per_s"])
    found = [lv.get("requests_per_s") for lv in data.get("levels", []) if isinstance(lv, dict)]
    levels = [float(v) for v in found if isinstance(v, (int, float)) and v > 0]
    if not levels:
        raise InvalidRequestError(f"{path} has no images_per_s or levels[].requests_per_s.", param="bench")
    return float(max(levels))


def table(result: CostResult) -> str:
    """A plain-text table of the comparison."""
    c = result.inputs["currency"]
    a, s, cap = result.api, result.self_hosted, result.capacity
    rows = [
        ("", "cloud API", "self-hosted"),
        ("per day", a["per_day"], s["per_day"]),
        ("per month (30 days)", a["per_month"], s["per_month"]),
        ("per year", a["per_year"], s["per_year"]),
        ("per 1,000 images", a["per_1000_images"], s["per_1000_images"]),
    ]
    lines = [f"{rows[0][0]:<24}{rows[0][1]:>16}{rows[0][2]:>16}"]
    lines += [f"{label:<24}{x:>12,.2f} {c}{y:>12,.2f} {c}" for label, x, y in rows[1:]]
    even = result.break_even_month
    when = f"break-even after {even:.1f} months" if even is not None else "never breaks even"
    lines.append(f"hardware: {s['servers']} server(s), {s['hardware']:,.0f} {c}; {when}")
    lines.append("savings: " + ", ".join(f"{y} y {v:,.0f}" for y, v in result.savings_by_year.items()))
    verdict = "keeps up" if cap["keeps_up"] else "does NOT keep up"
    lines.append(f"capacity: peak {cap['peak_images_per_s']:.2f} images/s needs {cap['gpus_needed']} GPU(s); "
                 f"the fleet {verdict} with {cap['headroom']:+.0%} headroom")  # fmt: skip
    return "\n".join(lines)
