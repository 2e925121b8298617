"""The cost calculator: the worked example, per-token pricing, capacity, bad inputs, the CLI."""

from __future__ import annotations

import json

import pytest

from glmflash.cost import CostInputs, compare, cumulative, throughput_from_bench
from glmflash.errors import InvalidRequestError
from tests.conftest import run_cli


def test_defaults_reproduce_the_worked_example():
    r = compare()
    # 0.01 CNY x 100,000 a day = 1,000 a day; x 30 = 30,000 a month; x 365 = 365,000 a year
    assert (r.api["per_day"], r.api["per_month"], r.api["per_year"]) == pytest.approx(
        (1_000, 30_000, 365_000)
    )
    # 15,000 / 36 = 416.67 depreciation + 180 power (6 kWh a day x 30 x 1.0) + 320 network/upkeep = 916.67
    assert r.self_hosted["depreciation_per_month"] == pytest.approx(416.67, abs=0.01)
    assert r.self_hosted["per_month"] == pytest.approx(916.67, abs=0.01)
    assert r.inputs["currency"] == "CNY" and r.capacity["keeps_up"]


def test_break_even_for_two_servers_is_about_a_month():
    r = compare(standby_servers=1)
    # 30,000 of hardware; running costs 500 + a standby idling at 100 W (72 a month) = 572 a month;
    # the API costs 30,000 a month, so 30,000 / (30,000 - 572) = 1.02 months
    assert r.self_hosted["hardware"] == 30_000
    assert r.break_even_month == pytest.approx(30_000 / (30_000 - 572), rel=1e-6)
    assert 0.9 < r.break_even_month < 1.1


def test_per_token_pricing_replaces_the_per_call_price():
    r = compare(api_price_per_million_input_tokens=2.0, api_price_per_million_output_tokens=8.0)
    # 1,400 x 2 / 1e6 + 200 x 8 / 1e6 = 0.0044 a call
    assert r.api["per_call"] == pytest.approx(0.0044)
    assert r.api["per_day"] == pytest.approx(440)


def test_capacity_three_gpus_for_the_peak():
    cap = compare(images_per_second_per_gpu=1.5).capacity
    # 100,000 / 86,400 = 1.157 images/s on average, x 3 at peak = 3.47; 3.47 / 1.5 = 2.3 -> 3 GPUs
    assert cap["peak_images_per_s"] == pytest.approx(3.472, abs=0.001)
    assert cap["gpus_needed"] == 3 and cap["servers_needed"] == 3 and cap["keeps_up"]


def test_cumulative_costs_cross_at_break_even():
    r = compare(standby_servers=1)
    rows = cumulative(r, 3)
    assert rows[0] == (0, 0, 30_000) and rows[2][1] > rows[2][2]


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"requests_per_day": -5}, "requests_per_day"),
        ({"images_per_second_per_gpu": 0}, "images_per_second_per_gpu"),
        ({"peak_factor": 0.5}, "peak_factor"),
        ({"load_hours_per_day": 30}, "load_hours_per_day"),
        ({"server_price": float("nan")}, "server_price"),
        ({"requests_per_day": 1e15}, None),
        ({"currency": ""}, "currency"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_inputs_are_clear_errors(changes, param):
    with pytest.raises(InvalidRequestError) as info:
        compare(**changes)
    assert info.value.param == param and info.value.message


def test_cli_json_equals_the_library(tmp_path):
    result = run_cli("cost", "--requests-per-day", "50000", "--standby-servers", "1", "--json")
    assert result.returncode == 0, result.stderr
    expected = compare(requests_per_day=50_000, standby_servers=1).to_dict()
    assert json.loads(result.stdout) == json.loads(json.dumps(expected))


def test_cli_table_and_errors(tmp_path):
    table = run_cli("cost")
    assert table.returncode == 0 and "30,000.00 CNY" in table.stdout and "916.67 CNY" in table.stdout
    bad = run_cli("cost", "--peak-factor", "0.5")
    assert bad.returncode == 2 and bad.stderr.startswith("error: peak_factor")


def test_throughput_from_a_benchmark_file(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"levels": [{"requests_per_s": 1.2}, {"requests_per_s": 2.5}]}))
    assert throughput_from_bench(str(bench)) == 2.5
    result = run_cli("cost", "--bench", str(bench), "--json")
    assert json.loads(result.stdout)["inputs"]["images_per_second_per_gpu"] == 2.5
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InvalidRequestError):
        throughput_from_bench(str(tmp_path / "bad.json"))
    assert CostInputs().images_per_second_per_gpu == 4.0


def test_comparators_price_per_token_in_the_inputs_currency():
    from glmflash.cost import COMPARATORS, comparator

    flashx = compare(**comparator("glm-4.6v-flashx"))
    # (1,400 x 0.06 + 200 x 0.36) / 1e6 dollars a call, x 7.1 CNY per dollar
    assert flashx.api["per_call"] == pytest.approx((1_400 * 0.06 + 200 * 0.36) / 1e6 * 7.1)
    in_dollars = compare(currency="USD", **comparator("glm-4.6v", "USD"))
    assert in_dollars.api["per_call"] == pytest.approx((1_400 * 0.30 + 200 * 0.90) / 1e6)
    assert compare(**comparator("per-call")).api["per_call"] == 0.01
    assert all(c.source and "2026" in c.source for c in COMPARATORS.values() if c.usd)
    with pytest.raises(InvalidRequestError) as info:
        comparator("glm-4.6v-flash")  # the free API is no comparator
    assert info.value.param == "comparator"


def test_tokens_per_request_measured_from_results(tmp_path):
    from glmflash.cost import usage_from_results

    results = tmp_path / "results.jsonl"
    lines = [{"id": "a", "usage": {"prompt_tokens": 1000, "completion_tokens": 100}},
             {"id": "b", "usage": {"prompt_tokens": 1400, "completion_tokens": 300}},
             {"id": "c", "error": "not an image"}]  # fmt: skip
    results.write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    assert usage_from_results(str(results)) == {"input_tokens_per_call": 1200, "output_tokens_per_call": 200}
    cli = run_cli("cost", "--comparator", "glm-4.6v-flashx", "--usage", str(results), "--json")
    assert cli.returncode == 0, cli.stderr
    inputs = json.loads(cli.stdout)["inputs"]
    assert inputs["input_tokens_per_call"] == 1200
    assert inputs["api_price_per_million_output_tokens"] == pytest.approx(0.36 * 7.1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{}\n")
    bad = run_cli("cost", "--usage", str(empty))
    assert bad.returncode == 2 and "no records with usage" in bad.stderr


def test_the_plot_reads_plain_currency_not_powers_of_ten():
    from glmflash.ui.cost_tab import cost_plot

    figure = cost_plot(compare(requests_per_day=1_000_000))
    formatter = figure.axes[0].yaxis.get_major_formatter()
    assert formatter(3_000_000, 0) == "3,000,000"
