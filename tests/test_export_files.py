"""The NDJSON files of an export across crashes (gateway/store/export_files.py): whatever was written
after the last save is cut away on resume, so writing on from the saved position gives every line
exactly once, in order, each file within its size."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.export_files import ExportFiles
from gateway.store.export_jobs import ExportState

LINES = [f'{{"resourceType":"Patient","id":"p{n:04}"}}' for n in range(300)]


@settings(max_examples=30, deadline=None)
@given(
    max_lines=st.integers(1, 40),
    pages=st.lists(st.integers(1, 25), min_size=1, max_size=40),
    runs=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=4),
)
def test_resume_after_crashes_writes_every_line_once(
    tmp_path_factory: object, max_lines: int, pages: list[int], runs: list[tuple[int, int]]
) -> None:
    """Each run writes some pages saving after each, then some more never saved, then dies; the
    last run goes to the end. The files then hold LINES exactly."""
    root = Path(tmp_path_factory.mktemp("export"))  # type: ignore[attr-defined]
    saved = ExportState()
    sizes = itertools.cycle(pages)
    for saved_pages, unsaved_pages in [*runs, (10_000, 0)]:
        files = ExportFiles(root, "job", copy.deepcopy(saved), max_lines)
        files.resume()
        position = int(files.state.after or 0)
        for page in range(saved_pages + unsaved_pages):
            if position >= len(LINES):
                break
            chunk = LINES[position : position + next(sizes)]
            files.write_resources("Patient", chunk)
            position += len(chunk)
            files.state.after = str(position)
            files.flush()
            if page < saved_pages:
                saved = copy.deepcopy(files.state)
        files.close()  # a kill: what was flushed stays on disk, the state is the last saved
    assert int(saved.after) == len(LINES)
    written = []
    for entry in saved.files:
        text = (root / "job" / entry.name).read_text()
        assert entry.count == len(text.splitlines()) <= max_lines and entry.size == len(text.encode())
        written += text.splitlines()
    assert written == LINES
    assert sorted(p.name for p in (root / "job").iterdir()) == sorted(f.name for f in saved.files)
