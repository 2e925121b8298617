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
