"""MLLP framing, without I/O: ``<VT> payload <FS><CR>``.

HL7 Version 3 Standard: Transport Specification - MLLP, Release 1 (also HL7 v2.5 Appendix C.4).
The payload cannot contain the block characters, so a frame ends at the first 0x1C.
MLLP Release 2 adds commit acknowledgements: a frame whose whole payload is ACK (0x06) or NAK (0x15).
"""

from __future__ import annotations

from collections.abc import Sequence

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
_CR = CARRIAGE_RETURN[0]
#: MLLP Release 2 commit acknowledgement payloads: stored safely (ACK) / not stored (NAK).
COMMIT_ACK = b"\x06"
COMMIT_NAK = b"\x15"
#: How much of an oversized frame is kept for operators (its header and the start of its body).
OVERSIZED_HEAD_BYTES = 64 * 1024


class FramingError(Exception):
    """The byte stream broke MLLP framing. A transport problem, not an HL7 one: no ACK can be tied
    to it. ``frames`` holds the payloads completed by the same ``feed`` call, in order."""

    def __init__(self, message: str, frames: Sequence[bytes] = (), dropped: bytes = b""):
        super().__init__(message)
        self.frames = list(frames)
        #: The payload this problem made the decoder drop (for an oversized frame: its first
        #: OVERSIZED_HEAD_BYTES), so that the listener can keep it for operators.
        self.dropped = dropped


class FrameTooLarge(FramingError):
    """A frame grew beyond ``max_frame_bytes``; it is dropped up to its end block."""


def encode_frame(payload: bytes) -> bytes:
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("an MLLP payload cannot contain the block characters 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class FrameDecoder:
    """Incremental MLLP decoder: feed it bytes as they arrive, get back complete payloads.

    Policy for bad streams (dropped bytes are counted in ``discarded_bytes``, dropped frames in
    ``dropped_frames``):

    - bytes outside a frame (before a start block) are dropped;
    - a start block inside a frame abandons the unfinished frame: the sender started over (with
      ``keep_cut_off``, the abandoned payload is handed over in ``cut_off`` instead of dropped);
    - a frame longer than ``max_frame_bytes`` is dropped up to its end block and ``feed`` raises
      FrameTooLarge; the decoder carries on with the next frame;
    - a CR after the end block is optional, unless ``require_trailing_cr``: then a frame whose end
      block is followed by anything else is dropped and ``feed`` raises FramingError. A payload
      is only returned once its CR has arrived.

    ``feed`` raises at most once per call, for the first problem in ``data``; the exception's
    ``frames`` holds the payloads that call completed, which are not returned otherwise, and its
    ``dropped`` the start of the dropped payload.
    """

    def __init__(
        self, max_frame_bytes: int = 10 * 1024 * 1024, require_trailing_cr: bool = False, *, keep_cut_off: bool = False
    ):
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self.require_trailing_cr = require_trailing_cr
        self.keep_cut_off = keep_cut_off
        #: With ``keep_cut_off``: the payloads cut off by a new start block, not yet taken
        #: (``take_cut_off``), each with the number of payloads the same ``feed`` call completed
        #: before it (the frame's own start block is not included; one over the size limit is cut
        #: to its first OVERSIZED_HEAD_BYTES).
        self.cut_off: list[tuple[int, bytes]] = []
        self.discarded_bytes = 0
        self.dropped_frames = 0
        self._buffer = bytearray()
        self._in_frame = False
        self._oversized = False  # dropping the rest of a frame that grew too large
        self._after_end = False  # the previous byte was an end block
        self._held: bytes | None = None  # payload waiting for its CR (require_trailing_cr)

    @property
    def in_frame(self) -> bool:
        """A frame has started and is not finished (for the listener's frame timeout)."""
        return self._in_frame or self._held is not None

    @property
    def has_unfinished(self) -> bool:
        """A frame has started, is not finished, and is not being dropped for its size."""
        return self._held is not None or (self._in_frame and not self._oversized)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes buffered for the unfinished frame."""
        return len(self._buffer) + len(self._held or b"")

    def unfinished(self) -> bytes:
        """The payload bytes received so far of the frame not yet finished (b"" when none)."""
        if self._held is not None:
            return self._held
        return bytes(self._buffer) if self._in_frame and not self._oversized else b""

    def reset(self) -> None:
        """Forget any unfinished frame (its bytes count as discarded)."""
        if self._in_frame and not self._oversized:
            self.discarded_bytes += 1 + len(self._buffer)
            self.dropped_frames += 1
        if self._held is not None:
            self.discarded_bytes += 2 + len(self._held)
            self.dropped_frames += 1
        self._buffer.clear()
        self._in_frame = self._oversized = self._after_end = False
        self._held = None

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data``, in order."""
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        if (
            # The usual case: between frames, ``data`` is exactly one whole frame, CR included.
            not self._in_frame
            and not self._after_end
            and data[:1] == START_BLOCK
            and data.find(END_BLOCK) == len(data) - 2
            and data[-1] == _CR
            and data.find(START_BLOCK, 1) < 0
            and len(data) - 3 <= self.max_frame_bytes
        ):
            return [bytes(data[1:-2])]
        frames: list[bytes] = []
        problem: FramingError | None = None
        pos, size = 0, len(data)
        while pos < size:
            if self._after_end:
                self._after_end = False
                held, self._held = self._held, None
                if data[pos] == _CR:
                    pos += 1
                    if held is not None:
                        frames.append(held)
                    continue
                if held is not None:
                    self.discarded_bytes += 2 + len(held)
                    self.dropped_frames += 1
                    problem = problem or FramingError(
                        f"MLLP end block not followed by CR (0x{data[pos]:02X} instead); frame dropped",
                        dropped=held,
                    )
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self.discarded_bytes += size - pos
                    break
                self.discarded_bytes += start - pos
                self._in_frame = True
                pos = start + 1
                continue
            end = data.find(END_BLOCK, pos)
            stop = size if end < 0 else end
            restart = data.find(START_BLOCK, pos, stop)
            if restart >= 0:
                self._abandon(data, pos, restart, len(frames))
                pos = restart + 1
                continue
            head = self._take(data, pos, stop)
            if head is not None and problem is None:
                problem = FrameTooLarge(f"MLLP frame larger than {self.max_frame_bytes} bytes; dropped", dropped=head)
            if end < 0:
                break
            pos = end + 1
            self._finish_frame(frames)
        if problem is not None:
            problem.frames = frames
            raise problem
        return frames

    def _take(self, data: bytes | bytearray, pos: int, stop: int) -> bytes | None:
        """Buffer ``data[pos:stop]`` as payload, or drop it if the frame is too large; when this
        call found the frame too large, returns the start of the dropped payload."""
        if self._oversized:
            self.discarded_bytes += stop - pos
        elif len(self._buffer) + (stop - pos) > self.max_frame_bytes:
            self.discarded_bytes += 1 + len(self._buffer) + (stop - pos)
            self.dropped_frames += 1
            head = bytes(self._buffer[:OVERSIZED_HEAD_BYTES])
            if len(head) < OVERSIZED_HEAD_BYTES:
                head += bytes(data[pos : min(stop, pos + OVERSIZED_HEAD_BYTES - len(head))])
            self._buffer.clear()
            self._oversized = True
            return head
        else:
            self._buffer += memoryview(data)[pos:stop]
        return None

    def _abandon(self, data: bytes | bytearray, pos: int, restart: int, completed: int) -> None:
        """A start block arrived inside a frame (at ``data[restart]``): hand over or drop the
        unfinished frame, whose last bytes are ``data[pos:restart]``, and start a new one."""
        if self.keep_cut_off and not self._oversized:  # an oversized frame was already reported
            size = len(self._buffer) + restart - pos
            head = OVERSIZED_HEAD_BYTES if size > self.max_frame_bytes else size
            self._buffer += memoryview(data)[pos : min(restart, pos + max(0, head - len(self._buffer)))]
            self.cut_off.append((completed, bytes(self._buffer[:head])))
        else:
            if not self._oversized:
                self.discarded_bytes += 1 + len(self._buffer)
                self.dropped_frames += 1
            self.discarded_bytes += restart - pos
        self._buffer.clear()
        self._oversized = False

    def take_cut_off(self) -> list[tuple[int, bytes]]:
        """The payloads cut off since the last call (see ``cut_off``), and forget them."""
        taken, self.cut_off = self.cut_off, []
        return taken

    def _finish_frame(self, frames: list[bytes]) -> None:
        self._in_frame = False
        if self._oversized:
            self._oversized = False
            self.discarded_bytes += 1  # its end block; a CR after it counts as stray too
            return
        self._after_end = True
        payload = bytes(self._buffer)
        self._buffer.clear()
        if self.require_trailing_cr:
            self._held = payload
        else:
            frames.append(payload)
