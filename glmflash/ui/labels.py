"""The page's words in English and Chinese (GLMFLASH_LANG=en|zh)."""

LABELS = {
    "en": {
        "title": "GLM-4.6V-Flash image Q&A",
        "chat_tab": "Chat",
        "cost_tab": "Cost",
        "running": "Running **{model}** in {precision} on {device}",
        "model_choice": "Model (LoRA adapter)",
        "base_model": "{name} (base model)",
        "demo_banner": (
            "⚠️ **Demo model loaded**: the tiny test model has random weights, so its answers are "
            "meaningless. Load the real model with `GLMFLASH_MODEL=/path/to/GLM-4.6V-Flash ./start.sh` "
            "(download: `hf download zai-org/GLM-4.6V-Flash`)."
        ),
        "placeholder": "Attach, paste or drop one or more images, then ask your question",
        "option_thinking": "Think before answering",
        "new_chat": "New chat",
        "retry": "Retry",
        "advanced": "Advanced",
        "system": "System prompt",
        "option_temperature": "Temperature (0: greedy)",
        "option_top_p": "Top p",
        "option_top_k": "Top k (0: every token)",
        "option_max_new_tokens": "Max tokens (thinking included)",
        "option_min_new_tokens": "Min tokens",
        "option_repetition_penalty": "Repetition penalty",
        "option_seed": "Seed (repeatable sampling)",
        "option_thinking_budget": "Thinking budget (tokens)",
        "option_stop": "Stop sequences",
        "option_stop_info": "one per line; the answer ends before the first",
        "option_default_info": "empty: the model's own default",
        "option_not_a_number": "{label}: {value!r} is not a number.",
        "no_answer": "*(No answer text: the model ended its turn without writing one — {finish}.)*",
        "api": "Show API call",
        "api_empty": "Ask something first: the request that reproduces your last turn appears here.",
        "thought": "Thinking",
        "figures": (
            "First token **{ttft:.2f} s** · **{tps:.1f}** tokens/s · prompt {prompt} tokens "
            "(images {images}) · answer {answer} tokens (reasoning {reasoning}) · {finish}"
        ),
        "gpu": " · peak GPU memory {gib:.1f} GiB",
        "examples": "Examples (click one)",
        "stopped": "stopped",
        "cut_in_reasoning": (
            "⚠️ **Cut off while still thinking**: the answer ran out of Max tokens ({tokens}) before the "
            "model finished its reasoning. Raise Max tokens under Advanced, or switch thinking off."
        ),
        "batch_tab": "Batch",
        "batch_intro": (
            "Run one task over many images; every answer is JSON in the task's fixed shape. Download the "
            "results as JSON lines or CSV. For big folders use the command line (resumable): "
            "`python -m glmflash batch folder/ --task moderation --out results.jsonl`"
        ),
        "batch_files": "Images",
        "batch_task": "Task",
        "batch_language": "Language of explanations",
        "batch_find": "What to find (the detect task)",
        "batch_run": "Run",
        "batch_stop": "Stop",
        "batch_file": "file",
        "batch_seconds": "seconds",
        "batch_error": "error",
        "batch_errors": "Not processed",
        "batch_downloads": "Download",
        "batch_no_files": "Add some images first.",
        "batch_status": (
            "**{state}**: {handled} of {total} images · {done} done · {failed} failed{duplicates} · "
            "{elapsed:.1f} s · {rate:.2f} images/s"
        ),
        "batch_duplicates": " · {n} duplicate(s) skipped",
        "batch_running": "Running",
        "batch_finished": "Finished",
        "batch_interrupted": "Stopped",
        "pdf_pages": "PDF pages to send (e.g. 1-3, 5; empty: every page)",
        "pdf_page": "{name} p. {n}",
        "pdf_cost": "{name}: {pages} pages, ~{tokens:,} visual tokens in all",
        "boxes_found": "**{n} box(es)** drawn where the model looked (pixels of your image):",
        "box_label": "label",
        "eval_tab": "Evaluate",
        "eval_intro": (
            "Is it good enough for your images? Upload a labels file (CSV or JSONL with the columns "
            "`image` and `expected`) with its images, or one zip of both; the task runs over them and "
            "its answers are scored against your labels. The report (HTML) has the plots, the worst "
            "mistakes and the cost per correct answer. To compare with a cloud API: "
            "`python -m glmflash eval labels.csv --task moderation --out runs/cloud --backend URL`"
        ),
        "eval_files": "Labels file and images (or a zip)",
        "eval_report": "Report",
        "eval_running": "**Running**: {handled} of {total} images",
        "eval_done": "**{state}**: accuracy **{accuracy:.1%}** over {n} images ({answered} answered)",
        "eval_left_out": "{n} row(s) of the labels were left out:",
    },
    "zh": {
        "title": "GLM-4.6V-Flash 图像问答",
        "chat_tab": "对话",
        "cost_tab": "成本",
        "running": "正在运行 **{model}**（{precision}，{device}）",
        "model_choice": "模型（LoRA 适配器）",
        "base_model": "{name}（基础模型）",
        "demo_banner": (
            "⚠️ **已加载演示模型**：这个测试模型的权重是随机的，回答没有意义。"
            "请用 `GLMFLASH_MODEL=/path/to/GLM-4.6V-Flash ./start.sh` 加载真实模型"
            "（下载：`hf download zai-org/GLM-4.6V-Flash`）。"
        ),
        "placeholder": "上传、粘贴或拖入一张或多张图片，然后输入问题",
        "option_thinking": "先思考再回答",
        "new_chat": "新对话",
        "retry": "重试",
        "advanced": "高级设置",
        "system": "系统提示词",
        "option_temperature": "温度（0 表示贪心解码）",
        "option_top_p": "Top p",
        "option_top_k": "Top k（0 表示不限）",
        "option_max_new_tokens": "最大生成长度（含思考）",
        "option_min_new_tokens": "最小生成长度",
        "option_repetition_penalty": "重复惩罚",
        "option_seed": "随机种子（可复现采样）",
        "option_thinking_budget": "思考预算（token 数）",
        "option_stop": "停止词",
        "option_stop_info": "每行一个；回答在第一个停止词前结束",
        "option_default_info": "留空：使用模型自带的默认值",
        "option_not_a_number": "{label}：{value!r} 不是数字。",
        "no_answer": "*（没有回答文本：模型未写回答就结束了本轮——{finish}。）*",
        "api": "查看 API 调用",
        "api_empty": "先提一个问题：这里会显示能复现上一轮对话的请求。",
        "thought": "思考过程",
        "figures": (
            "首字延迟 **{ttft:.2f} 秒** · **{tps:.1f}** tokens/秒 · 输入 {prompt} tokens（图片 {images}）· "
            "输出 {answer} tokens（思考 {reasoning}）· {finish}"
        ),
        "gpu": " · GPU 显存峰值 {gib:.1f} GiB",
        "examples": "示例（点击试用）",
        "stopped": "已停止",
        "cut_in_reasoning": (
            "⚠️ **思考尚未结束就被截断**：模型还在思考时已用完最大生成长度（{tokens}），没有给出回答。"
            "请在高级设置中调高最大生成长度，或关闭思考。"
        ),
        "batch_tab": "批量处理",
        "batch_intro": (
            "对多张图片执行同一个任务，每个回答都是该任务固定格式的 JSON。结果可下载为 JSON Lines 或 CSV。"
            "大批量图片请用命令行（可断点续跑）："
            "`python -m glmflash batch folder/ --task moderation --out results.jsonl`"
        ),
        "batch_files": "图片",
        "batch_task": "任务",
        "batch_language": "说明文字的语言",
        "batch_find": "要查找的内容（查找物体任务）",
        "batch_run": "运行",
        "batch_stop": "停止",
        "batch_file": "文件",
        "batch_seconds": "秒",
        "batch_error": "错误",
        "batch_errors": "未处理的文件",
        "batch_downloads": "下载",
        "batch_no_files": "请先添加图片。",
        "batch_status": (
            "**{state}**：{handled}/{total} 张图片 · 完成 {done} · 失败 {failed}{duplicates} · "
            "{elapsed:.1f} 秒 · {rate:.2f} 张/秒"
        ),
        "batch_duplicates": " · 跳过 {n} 张重复图片",
        "batch_running": "运行中",
        "batch_finished": "已完成",
        "batch_interrupted": "已停止",
        "pdf_pages": "要发送的 PDF 页（如 1-3, 5；留空：全部）",
        "pdf_page": "{name} 第 {n} 页",
        "pdf_cost": "{name}：{pages} 页，共约 {tokens:,} 个视觉 token",
        "boxes_found": "在模型关注的位置画出了 **{n} 个框**（坐标为原图像素）：",
        "box_label": "标签",
        "eval_tab": "评估",
        "eval_intro": (
            "它对您的图片够用吗？上传标注文件（CSV 或 JSONL，列为 `image` 和 `expected`）及其图片，"
            "或一个包含两者的 zip；任务会在这些图片上运行，并将答案与您的标注比对打分。报告（HTML）"
            "含图表、最严重的错误和每个正确答案的成本。与云端 API 对比："
            "`python -m glmflash eval labels.csv --task moderation --out runs/cloud --backend URL`"
        ),
        "eval_files": "标注文件和图片（或 zip）",
        "eval_report": "报告",
        "eval_running": "**运行中**：{handled} / {total} 张图片",
        "eval_done": "**{state}**：准确率 **{accuracy:.1%}**，共 {n} 张图片（{answered} 张有答案）",
        "eval_left_out": "标注中有 {n} 行未被使用：",
    },
}


def labels(lang: str) -> dict:
    return LABELS.get(lang, LABELS["en"])
