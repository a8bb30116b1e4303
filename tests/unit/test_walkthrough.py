"""scripts/walkthrough.sh types README's "Using it piece by piece" in order; here only
which lines it would run (the walk itself needs the embedded stack and minutes)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed(readme: Path | None = None) -> list[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if readme is not None:
        env["WALKTHROUGH_README"] = str(readme)
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/walkthrough.sh"), "--list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_walk_is_the_readmes_section_from_dev_up_to_dev_down() -> None:
    lines = listed()
    starts = [n for n, line in enumerate(lines) if line.startswith("streamrec ")]
    assert lines[starts[0]] == "streamrec dev up" and lines[-1] == "streamrec dev down"
    assert any(line.startswith("streamrec worker") and line.endswith("&") for line in lines)
    # A replay of the whole file would take minutes: every one is bounded.
    replays = [line for line in lines if line.startswith("streamrec replay")]
    assert replays and all("--limit" in line for line in replays)


def test_lines_are_rewritten_only_where_a_script_must(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "## Using it piece by piece\n\n```bash\n"
        "streamrec worker &        # in the background\n"
        "streamrec replay --rate 5 --limit 7\n"
        "streamrec replay --rate 5 &\n"
        "streamrec recs tail --json\n"
        "kill %1\n"
        "```\n\n## Next\n\n```bash\nnot this\n```\n"
    )
    assert listed(readme) == [
        "streamrec worker &",
        "streamrec replay --rate 5 --limit 7",
        "streamrec replay --rate 5 --limit 5000 &",
        "streamrec recs tail --json --limit 5",
        "kill %1",
    ]
    readme.write_text("# no such section\n")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/walkthrough.sh"), "--list"],
        env={"PATH": "/usr/bin:/bin", "WALKTHROUGH_README": str(readme)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Using it piece by piece" in done.stderr
