//! How a followed run looks while it runs: one live progress bar per node on a terminal, a compact
//! line at most once a second in logs, or one JSON line per message for scripts.
//!
//! Everything shown comes from the run the server sends (rate and ETA included, so every client
//! agrees); this module only draws it. Bars and lines go to stderr, so stdout keeps only data:
//! the run id before, the summary after, or the NDJSON stream. The pure formatting functions are
//! separate from the drawing so they can be tested without a terminal.

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use coffer_client::{proto, to_json};

use crate::cli::CliError;
use crate::cli::format;
use crate::cli::output::{Output, OutputFormat};

/// Least time between two compact lines when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Where a follower sends what it receives. [`LiveDisplay`] is the real one; tests record.
pub trait ProgressSink {
    /// Shows one message of the watch stream.
    ///
    /// Fails only when the message cannot be written (stdout closed, for NDJSON).
    fn update(&mut self, response: &proto::WatchRunResponse) -> Result<(), CliError>;

    /// Shows a note (a reconnection, ...) without disturbing the bars.
    fn note(&mut self, text: &str);
}

/// The way progress is shown, chosen from the output format and whether stderr is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// indicatif bars on stderr.
    Bars,
    /// A compact line on stderr at most once per [`LINE_INTERVAL`].
    Lines,
    /// Each message as one line of proto3 JSON on stdout, nothing on stderr.
    Json,
}

impl DisplayMode {
    /// Bars for people at a terminal, lines for logs, NDJSON whenever JSON was asked for.
    pub fn choose(format: OutputFormat, stderr_is_terminal: bool) -> Self {
        match format {
            OutputFormat::Json => Self::Json,
            OutputFormat::Table if stderr_is_terminal => Self::Bars,
            OutputFormat::Table => Self::Lines,
        }
    }

    /// How often to ask the server for messages: lines are printed at most once a second, so
    /// more frequent messages would only be dropped.
    pub fn min_update_interval(self) -> Option<prost_types::Duration> {
        match self {
            Self::Lines => prost_types::Duration::try_from(LINE_INTERVAL).ok(),
            Self::Bars | Self::Json => None,
        }
    }
}

/// Shows a run's progress as it changes, in the mode the session calls for.
#[derive(Debug)]
pub struct LiveDisplay<'a> {
    output: &'a Output,
    mode: DisplayMode,
    bars: Option<Bars>,
    throttle: Throttle,
    reported_failures: HashSet<String>,
}

impl<'a> LiveDisplay<'a> {
    /// A display for `output`'s format, drawing bars only when stderr is a terminal.
    pub fn new(output: &'a Output) -> Self {
        let mode = DisplayMode::choose(output.format(), std::io::stderr().is_terminal());
        Self {
            output,
            mode,
            bars: (mode == DisplayMode::Bars).then(Bars::new),
            throttle: Throttle::new(LINE_INTERVAL),
            reported_failures: HashSet::new(),
        }
    }

    pub fn mode(&self) -> DisplayMode {
        self.mode
    }

    /// Removes the bars, before the summary is printed.
    pub fn finish(&mut self) {
        if let Some(bars) = self.bars.take() {
            bars.clear();
        }
    }

    fn line(&mut self, run: &proto::Run) {
        let mut lines = Vec::new();
        // Node failures are rare and important: reported at once, not throttled away.
        for node in &run.nodes {
            if node.phase() == proto::NodePhase::Failed
                && self.reported_failures.insert(node.node_id.clone())
            {
                lines.push(node_failure_line(node));
            }
        }
        if self
            .throttle
            .ready(Instant::now(), is_final_state(run.state))
        {
            lines.push(run_line(run));
        }
        for line in lines {
            self.note(&line);
        }
    }
}

impl ProgressSink for LiveDisplay<'_> {
    fn update(&mut self, response: &proto::WatchRunResponse) -> Result<(), CliError> {
        match self.mode {
            DisplayMode::Json => self.output.json_line(&to_json(response)?)?,
            DisplayMode::Bars | DisplayMode::Lines => {
                if let Some(run) = &response.run {
                    match &mut self.bars {
                        Some(bars) => bars.update(run),
                        None => self.line(run),
                    }
                }
            }
        }
        Ok(())
    }

    fn note(&mut self, text: &str) {
        match &self.bars {
            Some(bars) => bars.println(text),
            // Nowhere left to report a failing stderr.
            None => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
        }
    }
}

/// The indicatif bars: a header line for the run, then one bar per node, in the server's order.
#[derive(Debug)]
struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    nodes: Vec<(String, ProgressBar)>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        header.enable_steady_tick(Duration::from_millis(120));
        Self {
            multi,
            header,
            nodes: Vec::new(),
        }
    }

    /// A node's bar: its id, the bar of bytes done, then [`node_bar_message`].
    fn node_style() -> ProgressStyle {
        ProgressStyle::with_template("{prefix} [{bar:30}] {msg}")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
    }

    fn update(&mut self, run: &proto::Run) {
        self.header.set_message(run_line(run));
        for node in &run.nodes {
            let index = match self.nodes.iter().position(|(id, _)| *id == node.node_id) {
                Some(index) => index,
                None => {
                    let bar = self.multi.add(ProgressBar::no_length());
                    bar.set_style(Self::node_style());
                    self.nodes.push((node.node_id.clone(), bar));
                    self.nodes.len() - 1
                }
            };
            let bar = &self.nodes[index].1;
            let progress = node.progress.unwrap_or_default();
            if progress.bytes_total > 0 {
                bar.set_length(progress.bytes_total);
            } else {
                bar.unset_length();
            }
            bar.set_position(progress.bytes_done);
            bar.set_message(node_bar_message(node));
        }
        let width = self
            .nodes
            .iter()
            .map(|(id, _)| id.chars().count())
            .max()
            .unwrap_or(0);
        for (id, bar) in &self.nodes {
            bar.set_prefix(format!("{id:<width$}"));
        }
    }

    fn println(&self, text: &str) {
        // Nowhere left to report a failing stderr.
        let _ = self.multi.println(text);
    }

    fn clear(self) {
        self.header.finish_and_clear();
        for (_, bar) in &self.nodes {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

/// Lets a line through at most once per interval, and always the final one.
#[derive(Debug, Clone)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// Whether to print now: the first time, when `force`d, or once `interval` has passed since
    /// the last line printed.
    pub fn ready(&mut self, now: Instant, force: bool) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if force || due {
            self.last = Some(now);
        }
        force || due
    }
}

/// Whether a run state is final: SUCCEEDED, FAILED or CANCELED.
pub fn is_final_state(state: i32) -> bool {
    matches!(
        proto::RunState::try_from(state),
        Ok(proto::RunState::Succeeded | proto::RunState::Failed | proto::RunState::Canceled)
    )
}

/// The text beside a node's bar: phase, bytes, rate and ETA, in aligned columns (rate and ETA
/// only while known); the error for a failed node.
///
/// `UPLOADING      1.2 GiB / 10.0 GiB    50.0 MiB/s  ETA 3m20s`
pub fn node_bar_message(node: &proto::NodeProgress) -> String {
    let phase = format::node_phase(node.phase);
    if node.phase() == proto::NodePhase::Failed {
        return format!("{phase:<12}  {}", node.last_error);
    }
    let progress = node.progress.unwrap_or_default();
    let rate = match progress.rate_bytes_per_second {
        0 => String::new(),
        rate => format::rate(rate),
    };
    let eta = progress
        .eta
        .map(|eta| format!("ETA {}", format::eta(Some(&eta))))
        .unwrap_or_default();
    let line = format!(
        "{phase:<12}  {:>23}  {rate:>12}  {eta}",
        format::size_of(progress.bytes_done, progress.bytes_total),
    );
    line.trim_end().to_owned()
}

/// The run in one compact line: state, progress of the totals, and how many nodes are in each
/// phase.
///
/// `RUNNING 45% 4.5 GiB / 10.0 GiB, 120/300 files, 50.0 MiB/s, ETA 2m10s | 2 UPLOADING, 1 DONE`
pub fn run_line(run: &proto::Run) -> String {
    let totals = run.totals.unwrap_or_default();
    let mut line = format::run_state(run.state);
    if totals.bytes_total > 0 {
        line.push(' ');
        line.push_str(&format::percent(totals.bytes_done, totals.bytes_total));
    }
    let mut details = vec![format::bytes_of(totals.bytes_done, totals.bytes_total)];
    if totals.files_total > 0 {
        details.push(format!(
            "{}/{} files",
            totals.files_done, totals.files_total
        ));
    }
    if totals.rate_bytes_per_second > 0 {
        details.push(format::rate(totals.rate_bytes_per_second));
    }
    if totals.eta.is_some() {
        details.push(format!("ETA {}", format::eta(totals.eta.as_ref())));
    }
    line.push(' ');
    line.push_str(&details.join(", "));
    let phases = phase_counts(&run.nodes);
    if !phases.is_empty() {
        line.push_str(" | ");
        line.push_str(&phases);
    }
    line
}

/// `node b FAILED: disk full`.
pub fn node_failure_line(node: &proto::NodeProgress) -> String {
    if node.last_error.is_empty() {
        format!("node {} FAILED", node.node_id)
    } else {
        format!("node {} FAILED: {}", node.node_id, node.last_error)
    }
}

/// `2 UPLOADING, 1 DONE`: nodes per phase, in the order of the phases.
fn phase_counts(nodes: &[proto::NodeProgress]) -> String {
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for node in nodes {
        match counts.iter_mut().find(|(phase, _)| *phase == node.phase) {
            Some((_, count)) => *count += 1,
            None => counts.push((node.phase, 1)),
        }
    }
    counts.sort_unstable();
    counts
        .into_iter()
        .map(|(phase, count)| format!("{count} {}", format::node_phase(phase)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(
        done: u64,
        total: u64,
        rate: u64,
        eta_seconds: Option<i64>,
    ) -> proto::ProgressCounters {
        proto::ProgressCounters {
            files_total: 300,
            files_done: 120,
            bytes_total: total,
            bytes_done: done,
            rate_bytes_per_second: rate,
            eta: eta_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
            ..Default::default()
        }
    }

    fn node(
        id: &str,
        phase: proto::NodePhase,
        progress: proto::ProgressCounters,
    ) -> proto::NodeProgress {
        proto::NodeProgress {
            node_id: id.to_owned(),
            phase: phase as i32,
            progress: Some(progress),
            ..Default::default()
        }
    }

    #[test]
    fn bar_message_aligns_phase_bytes_rate_and_eta() {
        let uploading = node(
            "a",
            proto::NodePhase::Uploading,
            counters(1 << 30, 10 << 30, 50 << 20, Some(200)),
        );
        assert_eq!(
            node_bar_message(&uploading),
            "UPLOADING          1.0 GiB / 10.0 GiB    50.0 MiB/s  ETA 3m20s"
        );
        let snapshotting = node("b", proto::NodePhase::Snapshotting, counters(0, 0, 0, None));
        assert_eq!(
            node_bar_message(&snapshotting),
            "SNAPSHOTTING                      0 B"
        );
        let done = node(
            "d",
            proto::NodePhase::Done,
            counters(1 << 30, 1 << 30, 0, None),
        );
        assert_eq!(
            node_bar_message(&done),
            "DONE                          1.0 GiB"
        );
        let failed = proto::NodeProgress {
            last_error: "disk full".to_owned(),
            ..node("c", proto::NodePhase::Failed, counters(0, 0, 0, None))
        };
        assert_eq!(node_bar_message(&failed), "FAILED        disk full");
    }

    #[test]
    fn run_line_shows_totals_and_phase_counts() {
        let run = proto::Run {
            state: proto::RunState::Running as i32,
            totals: Some(counters(45 << 20, 100 << 20, 50 << 20, Some(130))),
            nodes: vec![
                node("a", proto::NodePhase::Done, counters(0, 0, 0, None)),
                node("b", proto::NodePhase::Uploading, counters(0, 0, 0, None)),
                node("c", proto::NodePhase::Uploading, counters(0, 0, 0, None)),
            ],
            ..Default::default()
        };
        assert_eq!(
            run_line(&run),
            "RUNNING 45% 45.0 MiB / 100.0 MiB, 120/300 files, 50.0 MiB/s, ETA 2m10s | 2 UPLOADING, 1 DONE"
        );

        let queued = proto::Run {
            state: proto::RunState::Queued as i32,
            ..Default::default()
        };
        assert_eq!(run_line(&queued), "QUEUED 0 B");
    }

    #[test]
    fn failure_lines_name_the_node_and_error() {
        let failed = proto::NodeProgress {
            last_error: "agent unreachable".to_owned(),
            ..node("b", proto::NodePhase::Failed, counters(0, 0, 0, None))
        };
        assert_eq!(
            node_failure_line(&failed),
            "node b FAILED: agent unreachable"
        );
    }

    #[test]
    fn throttle_lets_one_line_a_second_and_every_final_one() {
        let start = Instant::now();
        let at = |millis| start + Duration::from_millis(millis);
        let mut throttle = Throttle::new(LINE_INTERVAL);
        assert!(throttle.ready(at(0), false));
        assert!(!throttle.ready(at(250), false));
        assert!(!throttle.ready(at(999), false));
        assert!(throttle.ready(at(1000), false));
        assert!(!throttle.ready(at(1500), false));
        assert!(
            throttle.ready(at(1600), true),
            "the final line is always printed"
        );
        assert!(
            !throttle.ready(at(2000), false),
            "counted from the forced line"
        );
        assert!(throttle.ready(at(2600), false));
    }

    #[test]
    fn display_mode_follows_format_and_terminal() {
        assert_eq!(
            DisplayMode::choose(OutputFormat::Table, true),
            DisplayMode::Bars
        );
        assert_eq!(
            DisplayMode::choose(OutputFormat::Table, false),
            DisplayMode::Lines
        );
        assert_eq!(
            DisplayMode::choose(OutputFormat::Json, true),
            DisplayMode::Json
        );
        assert_eq!(
            DisplayMode::choose(OutputFormat::Json, false),
            DisplayMode::Json
        );
        assert_eq!(
            DisplayMode::Lines.min_update_interval(),
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 0
            })
        );
        assert_eq!(DisplayMode::Bars.min_update_interval(), None);
    }

    #[test]
    fn final_states() {
        for (state, expected) in [
            (proto::RunState::Queued, false),
            (proto::RunState::Running, false),
            (proto::RunState::Canceling, false),
            (proto::RunState::Succeeded, true),
            (proto::RunState::Failed, true),
            (proto::RunState::Canceled, true),
        ] {
            assert_eq!(is_final_state(state as i32), expected, "{state:?}");
        }
        assert!(!is_final_state(99));
    }
}
