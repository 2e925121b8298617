"""Command line: `python -m glmflash serve | chat | batch | eval | training-data | finetune |
merge-adapter | bench | info | check | cost | tiny-model`.

Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields

from .config import Settings
from .errors import GlmflashError, ImageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glmflash", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    chat = commands.add_parser("chat", help="ask about one or more images (interactive without -q)")
    _model_flags(chat)
    chat.add_argument("images", nargs="*", help="image files")
    chat.add_argument("-q", "--question", help="ask once and exit")
    chat.add_argument("--hide-thinking", action="store_true", help="do not print the reasoning")
    _option_flags(chat)

    serve = commands.add_parser("serve", help="the OpenAI-compatible API on --host:--port")
    _model_flags(serve)
    serve.add_argument("--host", help="address to listen on (GLMFLASH_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (GLMFLASH_PORT, default 8080)")

    from .commands import batch, evaluate, finetune

    batch.add_parser(commands, _model_flags)
    evaluate.add_parser(commands, _model_flags)
    finetune.add_parsers(commands, _model_flags)

    bench = commands.add_parser("bench", help="TTFT, tokens/s, images/s, memory vs raw model.generate")
    _model_flags(bench)
    bench.add_argument("--size", type=int, help="image side in pixels (448; --arch-only: 1024)")
    bench.add_argument("--tokens", type=int, default=64, help="answer tokens, forced (64)")
    bench.add_argument("--requests", type=int, default=8, help="requests per measurement (8)")
    bench.add_argument("--concurrency", type=_int_list, default=[1, 4, 16], help="callers at once (1,4,16)")
    bench.add_argument("--json", default="bench.json", help="where the figures go (bench.json)")
    bench.add_argument("--arch-only", action="store_true", help="GPU: the real architecture, random weights")
    bench.add_argument(
        "--precisions",
        default="bf16,int8,int4",
        help="--arch-only variants: a precision, optionally +compile, +torchao (bf16,int8,int4)",
    )
    bench.add_argument(
        "--config", help="--arch-only: another architecture (JSON as glmflash/data/full_size_config.json)"
    )
    bench.add_argument(
        "--checkpoint", help="--arch-only: keep the random checkpoint in this folder and reuse it"
    )

    info = commands.add_parser("info", help="load the model and print engine.info as JSON")
    _model_flags(info)

    check = commands.add_parser("check", help="can this machine run it? GPU, memory, disk, ports")
    _model_flags(check)
    check.add_argument("--host", help="address the services will listen on (GLMFLASH_HOST)")
    check.add_argument("--port", type=int, help="the app's port (GLMFLASH_PORT, default 8080)")
    check.add_argument("--jupyter-port", type=int, default=8888, help="JupyterLab's port (8888)")
    check.add_argument("--no-jupyter", action="store_true", help="JupyterLab will not be started")

    cost = commands.add_parser("cost", help="cloud API per call vs self-hosting: a table (or --json)")
    from .cost import CostInputs

    for f in fields(CostInputs):
        kind = str if f.name == "currency" else float
        cost.add_argument(
            f"--{f.name.replace('_', '-')}", type=kind, help=f"{f.metadata['help']} ({f.default})"
        )
    from .cost import COMPARATORS

    cost.add_argument(
        "--comparator",
        choices=list(COMPARATORS),
        help="price the cloud side as this API (GLM-4.6V models: per token; sources in glmflash/cost.py)",
    )
    cost.add_argument(
        "--usage", help="a batch job's results or an eval run's items.jsonl: its measured tokens per request"
    )
    cost.add_argument("--bench", help="benchmark JSON: its measured images/s replaces the throughput")
    cost.add_argument("--json", action="store_true", help="print the whole result as JSON")

    tiny = commands.add_parser("tiny-model", help="write the tiny offline test model to PATH")
    tiny.add_argument("path")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--template",
        choices=["vision", "text"],
        default="vision",
        help="the prompt form: vision (<|assistant|>\\n, as GLM-4.5V) or text (<|assistant|>, as GLM-4.5)",
    )
    return parser


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("each value must be 1 or more")
    return values


def _model_flags(parser: argparse.ArgumentParser, *, adapter: bool = True) -> None:
    parser.add_argument("--model", help="auto, tiny, a hub id or a folder (GLMFLASH_MODEL)")
    parser.add_argument("--precision", help="auto, bf16, fp16, fp32, int8, int4 (GLMFLASH_PRECISION)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (GLMFLASH_DEVICE)")
    parser.add_argument(
        "--quantizer", choices=("bitsandbytes", "torchao"), help="int8/int4 library (GLMFLASH_QUANTIZER)"
    )
    parser.add_argument(
        "--compile", action="store_true", default=None, help="static cache + torch.compile (GLMFLASH_COMPILE)"
    )
    if not adapter:  # the command works on the base model alone (training, merging)
        return
    parser.add_argument(
        "--adapter", action="append",
        help="a LoRA adapter folder from `finetune`, or NAME=FOLDER; repeat to serve several, "
        "chosen per request by the API's model field (GLMFLASH_ADAPTER, commas between)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="glmflash: %(message)s", stream=sys.stderr)
    debug = args.debug
    try:
        settings = Settings.from_env(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            quantizer=getattr(args, "quantizer", None),
            compile=getattr(args, "compile", None),
            adapter=",".join(getattr(args, "adapter", None) or []) or None,
        )
        debug = debug or settings.debug
        if args.command == "cost":
            return _cost(args)
        if args.command == "check":
            return _check(args, settings)
        if args.command == "tiny-model":
            from .backends.local.tiny import build_tiny_model

            print(build_tiny_model(args.path, seed=args.seed, template=args.template))
            return 0
        if args.command == "bench":
            from .commands.bench import main as bench

            return bench(args, settings)
        if args.command == "batch":
            from .commands import batch

            return batch.run(args, lambda: _load(args, settings))
        if args.command == "eval":
            from .commands import evaluate

            return evaluate.run(args, lambda url, key: _load(args, settings, url, key))
        if args.command in ("training-data", "finetune", "merge-adapter"):
            from .commands import finetune

            base = settings.replace(adapter="")  # trains on, and merges into, the base model alone
            return finetune.run(args, lambda: _load(args, base, local_for=args.command), base)
        for path in getattr(args, "images", []):
            if not os.path.isfile(path):
                raise ImageError(f"No such image file: {path}")
        engine = _load(args, settings)
        if args.command == "info":
            print(json.dumps(engine.info.to_dict(), indent=2))
            return 0
        if args.command == "serve":
            from .server.run import serve

            serve(engine, settings)  # the whole Settings: the engine holds none of the server's secrets
            return 0
        return _chat(engine, args)
    except GlmflashError as exc:
        if debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _cost(args) -> int:
    from .cost import CostInputs, comparator, compare, table, throughput_from_bench, usage_from_results

    given = {f.name: getattr(args, f.name) for f in fields(CostInputs) if getattr(args, f.name) is not None}
    changes: dict = {}
    if args.comparator:
        base = CostInputs()
        currency, rate = given.get("currency", base.currency), given.get("usd_rate", base.usd_rate)
        changes.update(comparator(args.comparator, currency, rate))
    if args.usage:
        changes.update(usage_from_results(args.usage))
    changes.update(given)  # a price or token count given on its own wins
    for name in ("gpus_per_server", "standby_servers"):
        if name in changes:
            changes[name] = int(changes[name])
    if args.bench:
        changes["images_per_second_per_gpu"] = throughput_from_bench(args.bench)
    result = compare(**changes)
    print(json.dumps(result.to_dict(), indent=2) if args.json else table(result))
    return 0


def _check(args, settings) -> int:
    from .commands.check import format_report, run_checks

    chosen = {k: getattr(args, k) for k in ("model", "precision", "device") if getattr(args, k)}
    jupyter_port = None if args.no_jupyter else args.jupyter_port
    findings = run_checks(settings.replace(**chosen), jupyter_port=jupyter_port)
    print(format_report(findings))
    return 1 if any(f.level == "fail" for f in findings) else 0


def _load(args, settings, backend_url: str | None = None, api_key: str | None = None, *, local_for=""):
    """The engine the flags and settings name. `local_for`: a command that works on the model's
    weights, which refuses a remote backend before anything loads."""
    from .backends.registry import load

    if local_for:
        from .backends.local import require_local

        require_local(args.model, settings, local_for)
    if backend_url:
        return load(backend_url, api_key=api_key, settings=settings)
    return load(args.model, args.precision, args.device, settings=settings)


def _option_flags(parser) -> None:
    """A flag per generation option (options.OPTIONS): --temperature 0.2, --stop END (repeatable),
    --no-thinking; each unset one keeps the engine's default."""
    from .options import OPTIONS

    for name, option in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if option.kind == "bool":
            parser.add_argument(f"--no-{flag[2:]}", dest=name, action="store_false", default=None,
                                help=f"do not {option.help}")  # fmt: skip
        elif option.kind == "stops":
            parser.add_argument(flag, action="append", metavar="TEXT", help=f"{option.help} (repeatable)")
        else:
            parser.add_argument(flag, type=int if option.kind == "int" else float, help=option.help)


def _chat(engine, args) -> int:
    from .options import OPTIONS

    gen = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    content = [{"type": "image", "image": path} for path in args.images]
    history: list[dict] = []
    interactive = args.question is None
    question = args.question
    while True:
        if interactive:
            try:
                question = input("you> ").strip()
            except EOFError:
                return 0
            if question in ("", "exit", "quit"):
                return 0
        turn = [*content, {"type": "text", "text": question}] if not history else question
        history.append({"role": "user", "content": turn})
        answer = _stream_turn(engine, history, gen, show_thinking=not args.hide_thinking)
        history.append({"role": "assistant", "content": answer})
        if not interactive:
            return 0


def _stream_turn(engine, messages, gen, *, show_thinking: bool) -> str:
    dim, reset = ("\033[2m", "\033[0m") if sys.stderr.isatty() else ("", "")
    answer, in_reasoning = [], False
    stream = engine.stream(messages, **gen)
    try:
        for chunk in stream:
            if chunk.is_final:
                u, t = chunk.usage, chunk.timings
                finish = "length: cut off while thinking" if chunk.cut_in_reasoning else chunk.finish_reason
                print(
                    f"\n[{finish}] first token {t.ttft_s:.2f} s, {t.tokens_per_s:.1f} tokens/s, "
                    f"prompt {u.prompt_tokens} (images {u.image_tokens}), answer {u.completion_tokens} "
                    f"(reasoning {u.reasoning_tokens})",
                    file=sys.stderr,
                )
            elif chunk.reasoning:
                if show_thinking:
                    prefix = "" if in_reasoning else f"{dim}[thinking] "
                    print(f"{prefix}{dim}{chunk.text}{reset}", end="", file=sys.stderr, flush=True)
                in_reasoning = True
            else:
                if in_reasoning and show_thinking:
                    print(file=sys.stderr)
                in_reasoning = False
                answer.append(chunk.text)
                print(chunk.text, end="", flush=True)
    finally:
        stream.close()  # Ctrl-C: stops the generation and joins its thread
    print()
    return "".join(answer)
