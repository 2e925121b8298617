"""`python -m glmflash` as a user runs it: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

from tests.conftest import png_bytes, run_cli


def test_chat_once_about_an_image(cache_dir, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(size=(200, 100)))
    result = run_cli(
        "chat",
        str(image),
        "-q",
        "What is this?",
        "--model",
        "tiny",
        "--max-new-tokens",
        "5",
        env_extra={"GLMFLASH_CACHE_DIR": str(cache_dir)},
    )
    assert result.returncode == 0, result.stderr
    assert "tiny demo model" in result.stderr
    assert "first token" in result.stderr and "images " in result.stderr


def test_interactive_chat_keeps_history(cache_dir, tmp_path):
    import subprocess
    import sys

    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "glmflash", "chat", str(image), "--model", "tiny", "--max-new-tokens", "3"],
        input="first question\nsecond question\n",
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, "GLMFLASH_CACHE_DIR": str(cache_dir)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("first token") == 2


def test_errors_are_one_line_with_exit_code_2(cache_dir, tmp_path):
    env = {"GLMFLASH_CACHE_DIR": str(cache_dir)}
    cases = [
        (("chat", str(tmp_path / "missing.png"), "-q", "hi", "--model", "tiny"), "No such image file"),
        (("info", "--model", "tiny", "--precision", "int9"), "Unknown precision 'int9'"),
        (("info", "--model", "tiny", "--precision", "int4"), "int4 needs a CUDA GPU"),
        (("info", "--model", str(tmp_path / "nothing")), "does not exist"),
    ]
    for args, message in cases:
        result = run_cli(*args, env_extra=env)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr


def test_bad_environment_value_is_one_line(cache_dir):
    result = run_cli("info", env_extra={"GLMFLASH_MAX_NEW_TOKENS": "many"})
    assert result.returncode == 2 and "GLMFLASH_MAX_NEW_TOKENS='many'" in result.stderr


def test_tiny_model_command(tmp_path):
    result = run_cli("tiny-model", str(tmp_path / "tiny"), "--template", "text")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny" / "config.json").is_file()
    template = (tmp_path / "tiny" / "chat_template.jinja").read_text()
    assert "'<|assistant|>' + ('\\n<think></think>'" in template  # the text-family form
