"""The README's sample plan is the plan this code makes: its stage hashes are current."""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.plan import build_plan

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_sample_plan_hashes_are_current():
    text = README.read_text()
    block = text[text.index("```\nstatus   kind      stage") :]
    block = block[: block.index("\n```", 4)]
    shown = re.findall(r"^\S+\s+\S+\s+(\S+-[0-9a-f]{12})\s", block, flags=re.M)
    assert len(shown) >= 8, block
    current = {s.dirname for s in build_plan(["table2"], "paper").stages.values()}
    stale = [d for d in shown if d not in current]
    assert not stale, f"README's plan sample is stale ({stale}); regenerate it from `python -m benchmark plan table2`"
