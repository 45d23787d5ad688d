"""The progress display of fits: a tqdm bar where tqdm is installed (``tqdm.auto``: a widget in
notebooks, a bar in terminals), else a line on stderr every few seconds."""

import sys
import time


class Progress:
    """Updated by the native fit a few times a second with the GIL held."""

    def __init__(self, title):
        self.title = title
        self.bar = None
        self.step = 0
        self.last_line = 0.0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm

    def update(self, step, total, loss, val, best):
        if self._tqdm is not None:
            if self.bar is None:
                self.bar = self._tqdm(total=total, desc=self.title, unit="step", leave=False)
            self.bar.update(step - self.step)
            postfix = {"loss": f"{loss:.4f}"}
            if val is not None:
                postfix["val"] = f"{val:.4f}"
                postfix["best"] = f"{best:.4f}"
            self.bar.set_postfix(postfix, refresh=False)
        else:
            now = time.monotonic()
            if now - self.last_line >= 5.0 or val is not None:
                self.last_line = now
                of = f"/{total}" if total is not None else ""
                extra = f"  val {val:.4f} (best {best:.4f})" if val is not None else ""
                print(f"{self.title}: step {step}{of}  loss {loss:.4f}{extra}", file=sys.stderr, flush=True)
        self.step = step

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
