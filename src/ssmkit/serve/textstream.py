"""Generated token ids -> text deltas, with stop strings.

    stream = TextStream(tokenizer, stop=["\\n\\n"])
    delta, stopped = stream.push(token_id)       # text safe to send now; True once a stop string appeared
    rest = stream.flush()                        # what was held back, at the end
    stream.text                                  # the whole reply, cut before a stop string

A delta never ends inside a UTF-8 character (a byte-level model may emit one in pieces) nor with a
tail that could be the start of a stop string, so no client ever sees text that is later taken back.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # decoded so far (cut at a stop string once one is found)
        self.sent = 0  # characters of self.text handed out
        self.stopped = False

    def push(self, token_id: int) -> tuple[str, bool]:
        self.ids.append(int(token_id))
        self.text = self.tokenizer.decode(self.ids)
        cut = self._find_stop()
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            return self._take(cut), True
        return self._take(self._safe_end()), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        delta = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return delta

    def _find_stop(self) -> int | None:
        if not self.stop:
            return None
        longest = max(len(s) for s in self.stop)
        start = max(0, self.sent - longest)
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _safe_end(self) -> int:
        end = len(self.text)
        if end > self.sent and self.text[end - 1] == "\ufffd":  # maybe an unfinished UTF-8 character
            end -= 1
        hold = 0  # the longest tail that may grow into a stop string
        for s in self.stop:
            for k in range(min(len(s) - 1, end - self.sent), hold, -1):
                if self.text.endswith(s[:k], 0, end):
                    hold = k
                    break
        return end - hold
