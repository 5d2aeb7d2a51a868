//! How the command line shows progress: a spinner per step on a terminal, plain lines when
//! stderr is not one, nothing with `--quiet`.

use std::sync::Arc;
use std::time::Duration;

use guestbox::progress::{Progress, Reporter, StepReporter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

struct Terminal;

struct Spinner {
    bar: ProgressBar,
    message: String,
}

impl Reporter for Terminal {
    fn start(&self, message: &str) -> Box<dyn StepReporter> {
        let bar = ProgressBar::new_spinner();
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.to_string());
        if bar.is_hidden() {
            eprintln!("guestbox: {message} ...");
        } else {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Box::new(Spinner {
            bar,
            message: message.to_string(),
        })
    }

    fn note(&self, message: &str) {
        eprintln!("guestbox: {message}");
    }
}

impl StepReporter for Spinner {
    fn detail(&self, detail: &str) {
        self.bar.set_message(format!("{}: {detail}", self.message));
    }

    fn done(&self, seconds: f64) {
        if self.bar.is_hidden() {
            eprintln!("guestbox: {} done ({seconds:.1} s)", self.message);
        } else {
            self.bar
                .finish_with_message(format!("{} ({seconds:.1} s)", self.message));
        }
    }

    fn abandoned(&self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

/// The reporter for this invocation.
pub fn progress(quiet: bool) -> Progress {
    if quiet {
        Progress::quiet()
    } else {
        Progress::new(Arc::new(Terminal))
    }
}
