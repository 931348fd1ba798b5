"""The demo's live progress: the phase line and notes about events between snapshots."""

from __future__ import annotations

import io

from ingestor.progress import Display, Snapshot, render_block, render_line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _snap(phase: str = "") -> Snapshot:
    return Snapshot(1.0, 10, 10, 10, 5, 3, 2, 1, 5, 0, 0, 0, phase)


def test_the_phase_is_shown_only_when_set() -> None:
    assert render_line(_snap("bulk path: ITEMS job ACTIVE"), None).endswith(" | bulk path: ITEMS job ACTIVE")
    assert render_block(_snap("bulk path: ITEMS job ACTIVE"), None)[-1].strip() == "bulk path: ITEMS job ACTIVE"
    assert render_line(_snap(), None).endswith("lag 0")
    assert len(render_block(_snap(), None)) == 3


def test_a_note_goes_above_the_block_which_is_drawn_again_below_it() -> None:
    out = _Tty()
    display = Display(out)
    display.show(_snap())
    display.note("import job X ACTIVE")
    display.show(_snap())
    text = out.getvalue()
    first, rest = text.split("import job X ACTIVE\n")
    assert first.endswith("\x1b[3A\r\x1b[J")  # up over the 3 lines drawn, cleared, then the note
    assert "\x1b[" not in rest.split("\r", 1)[0]  # the next block starts below the note: no move up
    assert rest.count("\n") == 3


def test_a_note_is_a_plain_line_off_a_terminal() -> None:
    out = io.StringIO()
    display = Display(out)
    display.show(_snap())
    display.note("import job X ACTIVE")
    assert out.getvalue().splitlines()[-1] == "import job X ACTIVE"
