"""The docs stay true to the code: every relative link in the top-level Markdown files resolves,
every setting, error code and API field is documented, and the README keeps CI's test command.
(Links inside docs/ are checked by `mkdocs build --strict` in ./test.sh.)"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from glmflash.config import FIELDS
from glmflash.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINKED = ["README.md", "CONTRIBUTING.md", "deploy/README.md"]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
VARIABLE = re.compile(r"\bGLMFLASH_[A-Z][A-Z0-9_]*")


def prose(path: Path) -> str:
    """A Markdown file without its fenced code blocks (a link in code is not a link)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (what MkDocs uses) gives a heading."""
    text = re.sub(r"<[^>]+>|[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(prose(path))} | set(re.findall(r'id="([^"]+)"', prose(path)))


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("name", LINKED)
def test_every_relative_link_resolves(name):
    source = ROOT / name
    broken = []
    for target in relative_links(source):
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no heading #{anchor} in {path.relative_to(ROOT)})")
    assert not broken, f"{name} links to what is not there: {broken}"


def test_the_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](docs/nowhere.md)\n```\n[code](not/a/link.md)\n```\n")
    assert relative_links(page) == ["#title", "docs/nowhere.md"]
    assert "title" in anchors(page)
    assert slug("`python -m glmflash bench`") == "python-m-glmflash-bench"
    assert slug("GLM-4.6V-Flash under vLLM or SGLang") == "glm-46v-flash-under-vllm-or-sglang"


def test_the_readme_keeps_the_test_command_ci_runs():
    ci = (ROOT / ".ci/run").read_text()
    assert re.search(r"^\./test\.sh\b", ci, re.M), ".ci/run no longer runs ./test.sh"
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^\./test\.sh\b", readme, re.M), "README.md lost the test command CI runs"
    build = [line for line in (ROOT / "test.sh").read_text().splitlines() if "mkdocs build" in line]
    assert any("--strict" in line for line in build), "test.sh no longer builds the docs in strict mode"
    assert not any("--quiet" in line or " -q" in line for line in build), "--quiet hides strict's warnings"


def test_every_setting_is_on_the_configuration_page():
    page = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\|\s*`(GLMFLASH_[A-Z0-9_]+)`", page, re.M))
    fields = {f"GLMFLASH_{name.upper()}" for name in FIELDS}
    missing = sorted(fields - documented)
    assert not missing, f"settings missing from docs/configuration.md: {missing}"
    read_elsewhere = set()
    for pattern in ("glmflash/**/*.py", "*.sh", "scripts/*", "notebooks/*.ipynb", "Dockerfile", "deploy/*"):
        for path in ROOT.glob(pattern):
            if path.is_file():
                read_elsewhere |= set(VARIABLE.findall(path.read_text(encoding="utf-8", errors="replace")))
    missing = sorted(read_elsewhere - documented)
    assert not missing, f"GLMFLASH_* variables missing from docs/configuration.md's tables: {missing}"
    stale = sorted(documented - fields - read_elsewhere)
    assert not stale, f"docs/configuration.md documents variables nothing reads any more: {stale}"


def error_codes() -> set[str]:
    codes = set()
    for path in (ROOT / "glmflash").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        codes |= set(re.findall(r'\bcode\s*=\s*"([a-z_]+)"', text))
        codes |= set(re.findall(r'_reply\(\s*send,\s*\d+,.*?,\s*"([a-z_]+)"\s*,?\s*\)', text, re.S))
    return codes


def test_every_error_code_is_on_the_api_page():
    codes = error_codes()
    assert {"invalid_api_key", "ip_not_allowed", "request_too_large", "kv_cache_exceeded"} <= codes
    page = (DOCS / "api.md").read_text()
    missing = {code for code in codes if f"`{code}`" not in page}
    assert not missing, f"error codes missing from docs/api.md: {sorted(missing)}"


def test_every_request_field_is_on_the_api_page():
    from glmflash.server.protocol import IGNORED, NEUTRAL, ChatCompletionRequest

    fields = set(ChatCompletionRequest.model_fields) | set(NEUTRAL) | IGNORED
    fields |= {key.rpartition(".")[2] for option in OPTIONS.values() for key in option.api}
    page = (DOCS / "api.md").read_text()
    missing = {name for name in fields if f"`{name}`" not in page}
    assert not missing, f"request fields missing from docs/api.md: {sorted(missing)}"
