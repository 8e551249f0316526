"""The short README and the documentation site's sources (`make docs` builds the site with --strict)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "reference"


def test_readme_is_at_most_1500_words():
    """Every whitespace-separated word counts, those in code blocks and tables included (as `wc -w`)."""
    words = len(README.read_text().split())
    assert words <= 1500, f"README.md has {words} words; move the detail to a page under docs/"


def test_readme_links_reach_files_of_the_repository():
    """Relative links are what GitHub follows; each must name a file that exists."""
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", README.read_text())
    assert "docs/index.md" in targets
    assert [t for t in targets if not (ROOT / t).is_file()] == []


def test_every_module_is_in_the_api_reference_once():
    root = ROOT / "src"
    modules = sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                     for p in (root / "expotion").rglob("*.py"))
    documented = [m for page in sorted(REFERENCE.glob("*.md"))
                  for m in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M)]
    assert sorted(documented) == modules

