//! Progress reporting for long steps (image builds, bootstrap). Quiet mode prints nothing;
//! otherwise a spinner per step on a terminal, plain lines when stderr is not a terminal.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Quiet,
    Normal,
}

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    mode: Mode,
}

impl Progress {
    pub fn new(mode: Mode) -> Self {
        Self { mode }
    }

    pub fn quiet() -> Self {
        Self::new(Mode::Quiet)
    }

    /// Starts a step; finish it with [`Step::done`]. Dropped unfinished, it reports nothing.
    pub fn step(&self, message: impl Into<String>) -> Step {
        let message = message.into();
        tracing::info!("{message}");
        let bar = match self.mode {
            Mode::Quiet => None,
            Mode::Normal => {
                let bar = ProgressBar::new_spinner();
                bar.set_draw_target(ProgressDrawTarget::stderr());
                if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                    bar.set_style(style);
                }
                bar.set_message(message.clone());
                if bar.is_hidden() {
                    eprintln!("guestbox: {message} ...");
                } else {
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                Some(bar)
            }
        };
        Step {
            bar,
            message,
            started: Instant::now(),
        }
    }

    pub fn note(&self, message: &str) {
        tracing::info!("{message}");
        if self.mode == Mode::Normal {
            eprintln!("guestbox: {message}");
        }
    }
}

pub struct Step {
    bar: Option<ProgressBar>,
    message: String,
    started: Instant,
}

impl Step {
    /// Updates the detail shown next to the step (e.g. the package being unpacked).
    pub fn detail(&self, detail: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}: {detail}", self.message));
        }
    }

    pub fn done(self) {
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!("{} done in {secs:.1} s", self.message);
        if let Some(bar) = &self.bar {
            if bar.is_hidden() {
                eprintln!("guestbox: {} done ({secs:.1} s)", self.message);
            } else {
                bar.finish_with_message(format!("{} ({secs:.1} s)", self.message));
            }
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.finish_and_clear();
            }
        }
    }
}
