//! Path filters: which files of a node a backup or restore selects.
//!
//! A filter is two lists of globs over absolute paths on the node. A file is selected when it
//! matches an include pattern (or there are none) and no exclude pattern. `*` and `?` never cross
//! a `/`; `**` does. The server validates a filter when a run is asked for, the agent compiles the
//! same filter when it walks or restores, and the backup manifest records it: one definition, so
//! the three can never disagree about which file a pattern names.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// Most patterns one list of a filter may hold.
pub const MAX_PATTERNS: usize = 256;

/// Longest pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Path globs selecting files (absolute paths on the node): a file is in when it matches an
/// include pattern (or there are none) and no exclude pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFilter {
    /// Patterns of files to include; empty includes every file.
    #[serde(default)]
    pub include: Vec<String>,
    /// Patterns of files to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A pattern list that does not compile, or breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FilterError {
    /// Where the bad pattern is, `include`, `include[3]` or `exclude[0]`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PathFilter {
    /// Whether the filter selects every file.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Compiles both lists.
    ///
    /// Fails with the list (and the index of the pattern) at fault when a list holds more than
    /// [`MAX_PATTERNS`] patterns, a pattern is empty or longer than [`MAX_PATTERN_LEN`] bytes, or
    /// a pattern is not a valid glob.
    pub fn compile(&self) -> Result<PathMatcher, FilterError> {
        Ok(PathMatcher {
            include: compile_list("include", &self.include)?,
            exclude: compile_list("exclude", &self.exclude)?,
        })
    }
}

/// A compiled [`PathFilter`].
#[derive(Debug, Clone)]
pub struct PathMatcher {
    include: GlobSet,
    exclude: GlobSet,
}

impl PathMatcher {
    /// A matcher that selects every file.
    pub fn everything() -> Self {
        Self {
            include: GlobSet::empty(),
            exclude: GlobSet::empty(),
        }
    }

    /// Whether the file at `path` is selected.
    pub fn selects(&self, path: &str) -> bool {
        (self.include.is_empty() || self.include.is_match(path)) && !self.exclude.is_match(path)
    }
}

impl Default for PathMatcher {
    fn default() -> Self {
        Self::everything()
    }
}

fn compile_list(list: &str, patterns: &[String]) -> Result<GlobSet, FilterError> {
    if patterns.len() > MAX_PATTERNS {
        return Err(FilterError {
            field: list.to_string(),
            reason: format!("{} patterns, the limit is {MAX_PATTERNS}", patterns.len()),
        });
    }
    let mut set = GlobSetBuilder::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let at_fault = |reason: String| FilterError {
            field: format!("{list}[{index}]"),
            reason,
        };
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
            return Err(at_fault(format!(
                "patterns are 1 to {MAX_PATTERN_LEN} bytes long"
            )));
        }
        let glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|error| {
                at_fault(format!("{pattern:?} is not a valid glob: {}", error.kind()))
            })?;
        set.add(glob);
    }
    set.build().map_err(|error| FilterError {
        field: list.to_string(),
        reason: format!("patterns do not compile: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> PathFilter {
        PathFilter {
            include: include.iter().map(|p| p.to_string()).collect(),
            exclude: exclude.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_filter_selects_every_file() {
        let matcher = PathFilter::default().compile().expect("compiles");
        assert!(matcher.selects("/data/ks/t/md-1-big-Data.db"));
        assert!(PathMatcher::everything().selects("/anything"));
    }

    #[test]
    fn includes_select_and_excludes_win() {
        let matcher = filter(&["/data/ks/**"], &["**/*Index.db"])
            .compile()
            .expect("compiles");
        assert!(matcher.selects("/data/ks/t/md-1-big-Data.db"));
        assert!(!matcher.selects("/data/ks/t/md-1-big-Index.db"));
        assert!(!matcher.selects("/data/other/t/md-1-big-Data.db"));
    }

    #[test]
    fn a_single_star_does_not_cross_folders() {
        let matcher = filter(&["/data/*"], &[]).compile().expect("compiles");
        assert!(matcher.selects("/data/a"));
        assert!(!matcher.selects("/data/ks/a"));
    }

    #[test]
    fn bad_patterns_are_named_by_list_and_index() {
        let error = filter(&["/ok", "a[b"], &[])
            .compile()
            .expect_err("bad glob");
        assert_eq!(error.field, "include[1]");
        assert!(error.reason.contains("not a valid glob"), "{error}");

        let error = filter(&[], &[""]).compile().expect_err("empty");
        assert_eq!(error.field, "exclude[0]");

        let too_many = vec!["/a".to_string(); MAX_PATTERNS + 1];
        let error = PathFilter {
            include: too_many,
            exclude: Vec::new(),
        }
        .compile()
        .expect_err("too many");
        assert_eq!(error.field, "include");
    }
}
