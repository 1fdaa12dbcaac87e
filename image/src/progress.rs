//! Progress on the terminal for long build steps (quiet lines when not a terminal).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Step {
    bar: Option<ProgressBar>,
    message: String,
    started: Instant,
}

impl Step {
    /// A step whose length is unknown: a spinner on a terminal, a line otherwise.
    pub fn spinner(message: impl Into<String>) -> Step {
        let message = message.into();
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(message.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("cairn-image: {message} ...");
            None
        };
        Step {
            bar,
            message,
            started: Instant::now(),
        }
    }

    /// A step with a known count of items.
    pub fn counted(message: impl Into<String>, total: u64) -> Step {
        let message = message.into();
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(message.clone());
            Some(bar)
        } else {
            eprintln!("cairn-image: {message} ({total}) ...");
            None
        };
        Step {
            bar,
            message,
            started: Instant::now(),
        }
    }

    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    pub fn done(self) {
        let elapsed = self.started.elapsed().as_secs_f32();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("cairn-image: {} done in {elapsed:.1}s", self.message);
    }
}
