//! Progress of long steps (image builds, bootstrap), reported to whoever drives the
//! library: the library itself prints nothing. The CLI draws spinners or plain lines;
//! tests and front-ends stay quiet or log.

use std::sync::Arc;
use std::time::Instant;

/// What a front-end shows of progress.
pub trait Reporter: Send + Sync {
    /// A step starts; what it returns hears of it until it ends.
    fn start(&self, message: &str) -> Box<dyn StepReporter>;
    /// A line of its own (a fallback taken, a base found ready).
    fn note(&self, message: &str);
}

/// One step's view in the front-end.
pub trait StepReporter: Send {
    /// The detail next to the step changed (e.g. the package being unpacked).
    fn detail(&self, detail: &str);
    /// The step finished after `seconds`.
    fn done(&self, seconds: f64);
    /// The step ended without finishing (an error, an interrupt).
    fn abandoned(&self) {}
}

/// A handle on the front-end's reporter; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    reporter: Option<Arc<dyn Reporter>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.reporter.is_some() {
            "Progress"
        } else {
            "Progress(quiet)"
        })
    }
}

impl Progress {
    pub fn new(reporter: Arc<dyn Reporter>) -> Self {
        Self {
            reporter: Some(reporter),
        }
    }

    /// Reports nothing (but logs, as every step does).
    pub fn quiet() -> Self {
        Self { reporter: None }
    }

    /// Starts a step; finish it with [`Step::done`]. Dropped unfinished, it is abandoned.
    pub fn step(&self, message: impl Into<String>) -> Step {
        let message = message.into();
        tracing::info!("{message}");
        Step {
            view: self.reporter.as_ref().map(|r| r.start(&message)),
            message,
            started: Instant::now(),
            finished: false,
        }
    }

    pub fn note(&self, message: &str) {
        tracing::info!("{message}");
        if let Some(r) = &self.reporter {
            r.note(message);
        }
    }
}

pub struct Step {
    view: Option<Box<dyn StepReporter>>,
    message: String,
    started: Instant,
    finished: bool,
}

impl Step {
    /// Updates the detail shown next to the step.
    pub fn detail(&self, detail: &str) {
        if let Some(v) = &self.view {
            v.detail(detail);
        }
    }

    pub fn done(mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!("{} done in {secs:.1} s", self.message);
        self.finished = true;
        if let Some(v) = &self.view {
            v.done(secs);
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            if let Some(v) = &self.view {
                v.abandoned();
            }
        }
    }
}
