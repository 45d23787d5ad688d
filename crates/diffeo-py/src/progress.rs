//! What a fit does with the GIL released: every tenth of a second (and at every validation) it
//! takes the GIL back to check for Ctrl-C and to update the progress display
//! (`diffeo._progress.Progress`: tqdm where installed, notebooks included, else a line on
//! stderr). Ctrl-C asks the library to stop after the current step
//! ([`diffeo::train::stop_current_fit`]), keeping the best model so far; the interruption is
//! raised once the model is stored.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// Progress display and interruption of one fit.
pub(crate) struct Watch {
    display: Option<Py<PyAny>>,
    last: Instant,
    /// The `KeyboardInterrupt` (or other signal exception) seen, to raise after the fit.
    pub interrupt: Option<PyErr>,
}

impl Watch {
    /// A watch with a display titled `title` when `show`.
    pub fn new(py: Python<'_>, show: bool, title: &str) -> PyResult<Self> {
        let display = if show { Some(py.import("diffeo._progress")?.getattr("Progress")?.call1((title,))?.unbind()) } else { None };
        Ok(Self { display, last: Instant::now() - Duration::from_secs(1), interrupt: None })
    }

    /// Called from the fit's observer: `step` of `total` (`None`: until a budget is spent),
    /// `loss`, and a validation score when one was just computed. Every tenth of a second at
    /// most, unless `force`.
    pub fn tick(&mut self, step: usize, total: Option<usize>, loss: f64, score: Option<(f64, f64)>, force: bool) {
        if self.interrupt.is_some() {
            diffeo::train::stop_current_fit();
            return;
        }
        if !force && self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        Python::with_gil(|py| {
            if let Err(e) = py.check_signals() {
                self.interrupt = Some(e);
                diffeo::train::stop_current_fit();
                return;
            }
            if let Some(d) = &self.display {
                // A failing display (a closed notebook widget) must not end the fit.
                let _ = d.call_method1(py, "update", (step, total, loss, score.map(|s| s.0), score.map(|s| s.1)));
            }
        });
    }

    /// Closes the display.
    pub fn close(&self, py: Python<'_>) {
        if let Some(d) = &self.display {
            let _ = d.call_method0(py, "close");
        }
    }
}
