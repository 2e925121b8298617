"""build_demo(engine, settings): the Gradio page for image Q&A, streamed, with a real Stop."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import gradio as gr

from ..errors import GlmflashError, ImageError
from ..inputs.images import ImagePolicy
from ..models import served_models
from ..options import OPTIONS, to_openai
from . import uploads
from .batch_tab import build_batch_tab
from .controls import MAIN_ROW, control, generation
from .cost_tab import build_cost_tab
from .documents import chosen, preview, upload_path
from .eval_tab import build_eval_tab
from .examples import EXAMPLES, FOLDER
from .labels import labels

UPDATE_EVERY_S = 0.05  # at most 20 page updates a second, however fast the model is
# What the openai client takes as arguments; anything else goes in its extra_body.
OPENAI_CLIENT_ARGS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop"
}  # fmt: skip


def build_demo(engine, settings) -> gr.Blocks:
    uploads.folder(settings)  # before any component: each one caches files there
    t = labels(settings.server.lang)
    policy = ImagePolicy.from_limits(settings.limits, allow_local_files=False)
    stops: dict[str, threading.Event] = {}  # one stop switch per browser session
    info = engine.info
    engines = _by_model(engine, settings)  # the header's choices: model id -> engine answering so

    def respond(request: gr.Request, message, chat, history, system, pages, model, *values):
        """`chat`: the transcript as the server keeps it (a State): the client's Chatbot value is
        never read back, so no path a visitor writes into it reaches Gradio's file cache."""
        answering = engines.get(model, engine)  # the header's choice
        text = (message or {}).get("text", "").strip()
        files = list((message or {}).get("files") or [])
        if not text and not files:
            yield chat, chat, history, gr.skip(), gr.skip(), message
            return
        stop = threading.Event()
        try:
            gen = generation(dict(zip(controls, values, strict=True)), t)
            images = [image for f in files for image in chosen(_read_upload(f, policy), pages, policy)]
            turn = {
                "role": "user",
                "content": [*({"type": "image", "image": b} for b in images), {"type": "text", "text": text}],
            }
            system_turn = [{"role": "system", "content": system}] if system and system.strip() else []
            # The engine checks and decodes everything here, before any output.
            stream = answering.stream(
                [*system_turn, *history, turn], stop_event=stop, image_policy=policy, **gen
            )
        except GlmflashError as exc:
            gr.Warning(_plain(exc.message))  # the input was not cleared: it stays for another try
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        stops[request.session_hash or ""] = stop
        shown = chat + [{"role": "user", "content": {"path": upload_path(f)}} for f in files]
        shown = [*shown, {"role": "user", "content": text or " "}]
        answer, reasoning, final = "", "", None
        engine.reset_peak_memory()
        try:
            last = 0.0
            for chunk in stream:
                if chunk.is_final:
                    final = chunk
                    break
                if chunk.reasoning:
                    reasoning += chunk.text
                else:
                    answer += chunk.text
                if time.monotonic() - last >= UPDATE_EVERY_S:
                    last = time.monotonic()
                    partial = _chat(shown, reasoning, answer, t, pending=True)
                    yield (
                        partial,
                        partial,
                        history,
                        gr.skip(),
                        gr.skip(),
                        None,
                    )
        except GlmflashError as exc:  # mid-answer: the input was cleared, so give it back
            gr.Warning(_plain(exc.message))
            yield chat, chat, history, gr.skip(), gr.skip(), message
            return
        finally:
            stops.pop(request.session_hash or "", None)
        sent = [part["image"] for m in [*history, turn] if isinstance(m["content"], list)
                for part in m["content"] if part.get("type") == "image"]  # fmt: skip
        history = [*history, turn, {"role": "assistant", "content": answer}]
        figures = _figures(final, t, engine.memory())
        api = _api_call(files, text, system, gen, settings, model)
        drawn = _drawn_boxes(final, sent, t, settings.server.font)
        finish = final.finish_reason if final is not None else None
        done = _chat(shown, reasoning, answer, t, pending=False, finish=finish) + drawn
        yield done, done, history, figures, api, None

    def stop_generation(request: gr.Request):
        event = stops.get(request.session_hash or "")
        if event is not None:
            event.set()

    def ask(image_path, question):
        """The page's named API (for gradio_client): one image, one question, the answer."""
        content = [{"type": "text", "text": question or ""}]
        try:
            if image_path:
                content.insert(0, {"type": "image", "image": _read_upload(image_path, policy)})
            return engine.chat(
                [{"role": "user", "content": content}], image_policy=policy, max_new_tokens=256
            ).text
        except GlmflashError as exc:
            raise gr.Error(exc.message) from None

    with gr.Blocks(title=t["title"], analytics_enabled=False) as demo:
        header = t["running"].format(model=info.model_id, precision=info.precision, device=info.device)
        gr.Markdown(f"## {t['title']}\n{header}", elem_id="header")
        model_choice = _model_choice(info, settings, t)
        if info.demo_model:
            gr.Markdown(t["demo_banner"], elem_id="demo-banner")
        with gr.Tab(t["chat_tab"], elem_id="chat-tab"):
            chatbot = gr.Chatbot(height=480, buttons=["copy", "copy_all"], elem_id="chat", show_label=False)
            box = gr.MultimodalTextbox(
                placeholder=t["placeholder"], file_count="multiple", sources=["upload"],
                submit_btn=True, stop_btn=True, elem_id="ask", show_label=False,
            )  # fmt: skip
            controls: dict[str, gr.components.Component] = {}  # generation options, by library name
            with gr.Row():
                controls.update((name, control(name, t, settings.limits)) for name in MAIN_ROW)
                retry = gr.Button(t["retry"], size="sm", elem_id="retry")
                new_chat = gr.Button(t["new_chat"], size="sm", elem_id="new-chat")
            pdf_preview = gr.Gallery(
                visible=False, columns=8, height=190, object_fit="contain", elem_id="pdf-preview",
                show_label=True, allow_preview=True,
            )  # fmt: skip
            pdf_pages = gr.Textbox(
                label=t["pdf_pages"], placeholder="1-3, 5", max_lines=1, visible=False, elem_id="pdf-pages"
            )
            pdf_shown = gr.State([])
            figures = gr.Markdown(elem_id="figures")
            with gr.Accordion(t["advanced"], open=False, elem_id="advanced"):
                system = gr.Textbox(label=t["system"], lines=2, elem_id="system")
                advanced = [name for name in OPTIONS if name not in MAIN_ROW]
                controls.update((name, control(name, t, settings.limits)) for name in advanced)
            with gr.Accordion(t["api"], open=False, elem_id="api-accordion"):
                api = gr.Markdown(t["api_empty"], elem_id="api-call")
            order = (2, 1) if settings.server.lang == "zh" else (1, 2)  # both languages, the page's first
            gr.Examples(
                [[{"text": row[c], "files": [str(FOLDER / row[0])]}] for c in order for row in EXAMPLES],
                inputs=[box], label=t["examples"], elem_id="examples", examples_per_page=8,
            )  # fmt: skip
        with gr.Tab(t["cost_tab"], elem_id="cost-tab"):
            cost_inputs, cost_table, cost_plot, cost_update = build_cost_tab(settings.server.lang)
        with gr.Tab(t["batch_tab"], elem_id="batch-tab"):
            build_batch_tab(engine, settings, model_choice, engines)
        with gr.Tab(t["eval_tab"], elem_id="eval-tab"):
            build_eval_tab(engine, settings, model_choice, engines)
        history = gr.State([])
        transcript = gr.State([])  # what the chat shows, kept here: the client's copy is display only
        last_input = gr.State(None)
        with gr.Row(visible=False):
            api_image = gr.Image(type="filepath")
            api_question = gr.Textbox()
            api_answer = gr.Textbox()
            api_button = gr.Button()

        inputs = [box, transcript, history, system, pdf_pages, model_choice, *controls.values()]
        previews = [pdf_preview, pdf_pages, pdf_shown]
        box.change(lambda m, shown: preview(m, shown, policy, t), [box, pdf_shown], previews, queue=False)
        outputs = [chatbot, transcript, history, figures, api, box]
        # Waiting turns queue at the engine (one generation at a time); Stop skips every queue.
        slots = settings.server.max_queue + 1
        submitted = box.submit(lambda m: m, [box], [last_input], queue=False).then(
            respond, inputs, outputs, concurrency_limit=slots
        )
        retried = retry.click(
            _drop_last_turn, [transcript, history, last_input], [chatbot, transcript, history, box]
        ).then(respond, inputs, outputs, concurrency_limit=slots)
        box.stop(stop_generation, None, None, cancels=[submitted, retried], queue=False)
        cleared = [chatbot, transcript, history, figures, api, box]
        new_chat.click(lambda: ([], [], [], "", t["api_empty"], None), None, cleared)
        api_button.click(ask, [api_image, api_question], [api_answer], api_name="ask")
        demo.load(cost_update, cost_inputs, [cost_table, cost_plot], queue=False)
    demo.queue(max_size=settings.server.max_queue * 4)  # beyond this the page says the queue is full
    _quiet(demo)
    return demo


QUEUE_POLL_S, PROGRESS_POLL_S = 0.02, 0.1


def _quiet(demo) -> None:
    """Gradio's event queue looks for work every millisecond (progress every 10 ms) even when
    there is none: an idle server then burns a few percent of a core. Looking every 20 ms adds at
    most that to a click's start and lets an idle server sleep."""
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, QUEUE_POLL_S)
    if queue is not None and hasattr(queue, "progress_update_sleep_when_free"):
        queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, PROGRESS_POLL_S)


def _read_upload(file, policy: ImagePolicy) -> bytes:
    """An uploaded file's bytes (refused by size before reading); the engine decodes and checks them."""
    path = Path(upload_path(file))
    with path.open("rb") as f:
        data = f.read(policy.max_bytes + 1)  # never more than the limit, whatever the size says
    if len(data) > policy.max_bytes:
        size = path.stat().st_size
        raise ImageError(
            f"{path.name} is {size / 1e6:.1f} MB, over the {policy.max_bytes / 1e6:.1f} MB limit."
        )
    return data


def _plain(message: str) -> str:
    """Drop the "messages[0].content[1]: " prefix that means nothing to a person on the page."""
    return message.split(": ", 1)[1] if message.startswith("messages[") and ": " in message else message


def _chat(shown, reasoning, answer, t, *, pending: bool, finish: str | None = None):
    """The transcript with this turn's thinking and answer; a finished turn with no answer text
    says so (and why it ended) instead of showing an empty bubble."""
    out = list(shown)
    if reasoning:
        status = "pending" if pending and not answer else "done"
        out.append(
            {"role": "assistant", "content": reasoning, "metadata": {"title": t["thought"], "status": status}}
        )
    if not pending and not answer.strip():
        answer = t["no_answer"].format(finish=finish or "stop")
    out.append({"role": "assistant", "content": answer or "…"})
    return out


def _drawn_boxes(final, images: list[bytes], t, font: str = "") -> list[dict]:
    """When the answer has boxes: the picture they belong to with them drawn and labelled, and
    each box's pixel coordinates in the original image, as chat messages after the answer."""
    if final is None or not final.boxes or not images:
        return []
    import io
    import tempfile

    from PIL import Image

    from ..grounding.draw import draw_boxes

    index = final.boxes[0].image
    with Image.open(io.BytesIO(images[min(index, len(images) - 1)])) as original:
        picture = draw_boxes(original, final.boxes, font=font)
    with tempfile.NamedTemporaryFile(prefix="glmflash-boxes-", suffix=".png", delete=False) as f:
        picture.save(f, "PNG")
    rows = "\n".join(
        f"| {n} | {b.label or '-'} | {', '.join(str(v) for v in (b.pixels or ()))} |"
        for n, b in enumerate(final.boxes, 1)
    )
    head = f"| # | {t['box_label']} | x1, y1, x2, y2 (px) |\n|---|---|---|"
    table = f"{t['boxes_found'].format(n=len(final.boxes))}\n\n{head}\n{rows}"
    return [{"role": "assistant", "content": {"path": f.name}}, {"role": "assistant", "content": table}]


def _drop_last_turn(chat, history, last_input):
    """Retry: the transcript (the server's own) without its last turn, and that turn's input."""
    while chat and chat[-1]["role"] == "assistant":
        chat = chat[:-1]
    while chat and chat[-1]["role"] == "user":
        chat = chat[:-1]
    return chat, chat, history[:-2], last_input


def _figures(final, t, memory) -> str:
    if final is None:
        return ""
    u, s = final.usage, final.timings
    finish = t["stopped"] if final.finish_reason == "cancelled" else final.finish_reason
    text = t["figures"].format(
        ttft=s.ttft_s,
        tps=s.tokens_per_s,
        prompt=u.prompt_tokens,
        images=u.image_tokens,
        answer=u.completion_tokens,
        reasoning=u.reasoning_tokens,
        finish=finish,
    )
    if memory is not None:
        text += t["gpu"].format(gib=memory.peak_bytes / 1024**3)
    if final.cut_in_reasoning:
        text = t["cut_in_reasoning"].format(tokens=u.completion_tokens) + "\n\n" + text
    return text


def _by_model(engine, settings) -> dict:
    """With LoRA adapters: each model id the API takes (the base model's, each adapter's), with
    the engine answering as it; nothing to choose otherwise."""
    if not engine.info.adapters:
        return {}
    choices = served_models(engine.info, settings.server.served_model_name)
    return {model: engine.with_adapter(adapter) for model, adapter in choices.items()}


def _model_choice(info, settings, t):
    """The header's model selector when LoRA adapters are loaded (the base model or one of
    them, by the ids the API takes); a fixed nothing otherwise."""
    if not info.adapters:
        return gr.State(None)
    served = settings.server.served_model_name
    options = [(t["base_model"].format(name=served), served), *((name, name) for name in info.adapters)]
    default = info.adapter or served  # a remote engine's default is its backend's model
    return gr.Dropdown(options, value=default, label=t["model_choice"], elem_id="model-choice")


def _api_call(files, text, system, gen: dict, settings, model: str | None = None) -> str:
    """The curl and openai-client request that reproduces this turn against /v1/chat/completions."""
    names = [Path(upload_path(f)).name for f in files]
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,<base64 of {n}>"}} for n in names
    ]
    content.append({"type": "text", "text": text})
    messages = ([{"role": "system", "content": system}] if system and system.strip() else []) + [
        {"role": "user", "content": content}
    ]
    request = {"model": model or settings.server.served_model_name, "messages": messages, **to_openai(gen)}
    url = f"http://{settings.server.host}:{settings.server.port}/v1"
    body = json.dumps(request, ensure_ascii=False, indent=2)
    fill = "".join(f"#   {n}: base64 -w0 {n}\n" for n in names)
    curl = (
        f"{fill}curl {url}/chat/completions -H 'Content-Type: application/json' -d @- <<'JSON'\n{body}\nJSON"
    )
    python = (
        "import base64, json\nfrom openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{url}", api_key="YOUR_KEY")\n'
        f'request = json.loads(r"""{json.dumps(request, ensure_ascii=False)}""")\n'
        'for part in request["messages"][-1]["content"]:  # put the images in\n'
        '    if part["type"] == "image_url":\n'
        '        name = part["image_url"]["url"].split("<base64 of ")[1].rstrip(">")\n'
        '        data = base64.b64encode(open(name, "rb").read()).decode()\n'
        '        part["image_url"]["url"] = "data:image/png;base64," + data\n'
        f"extra = {{k: request.pop(k) for k in {sorted(set(request) - OPENAI_CLIENT_ARGS)}}}\n"
        "reply = client.chat.completions.create(**request, extra_body=extra)\n"
        "print(reply.choices[0].message.content)"
    )
    return f"```bash\n{curl}\n```\n\n```python\n{python}\n```"
