//! `[logging]`: the queue between the code that logs and the thread that
//! writes log and audit lines to stderr.
//!
//! A call only formats its lines and queues them; one background thread
//! writes them, a batch at a time, so the worker threads never wait on a
//! pipe to the log collector. The queue is bounded, and what a full queue
//! does is the operator's choice: `block` (the default) makes the logging
//! call wait for room, so no line, audit events included, is ever lost;
//! `drop` discards the line and counts it in
//! `tokengate_log_lines_dropped_total`, for those who rank latency above a
//! complete log.

use super::ConfigError;
use super::file::{LogOverflow, LoggingSection};

/// The longest queue accepted: a line is a few hundred bytes, so this is
/// already a few hundred MiB of backlog.
const MAX_QUEUE_LINES: usize = 1 << 20;

/// Validated `[logging]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    queue_lines: usize,
    drop_when_full: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self::resolve(&LoggingSection::default()).unwrap_or(Self {
            queue_lines: 8_192,
            drop_when_full: false,
        })
    }
}

impl LogSettings {
    /// How many lines may wait for the writer thread.
    pub fn queue_lines(&self) -> usize {
        self.queue_lines
    }

    /// Whether a line that finds the queue full is dropped (and counted)
    /// rather than waited for.
    pub fn drop_when_full(&self) -> bool {
        self.drop_when_full
    }

    pub(super) fn resolve(section: &LoggingSection) -> Result<Self, ConfigError> {
        if section.queue_lines == 0 || section.queue_lines > MAX_QUEUE_LINES {
            return Err(ConfigError::Invalid {
                key: "logging.queue_lines".into(),
                message: format!("must be between 1 and {MAX_QUEUE_LINES}"),
            });
        }
        Ok(Self {
            queue_lines: section.queue_lines,
            drop_when_full: section.overflow == LogOverflow::Drop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_blocks_and_bounds_are_checked() {
        let settings = LogSettings::default();
        assert_eq!(
            (settings.queue_lines(), settings.drop_when_full()),
            (8_192, false)
        );
        for lines in [0, MAX_QUEUE_LINES + 1] {
            let section = LoggingSection {
                queue_lines: lines,
                overflow: LogOverflow::Block,
            };
            let error = LogSettings::resolve(&section).unwrap_err();
            assert!(
                error.to_string().starts_with("logging.queue_lines: "),
                "{error}"
            );
        }
        let section = LoggingSection {
            queue_lines: 16,
            overflow: LogOverflow::Drop,
        };
        assert!(LogSettings::resolve(&section).unwrap().drop_when_full());
    }
}
