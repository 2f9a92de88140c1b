//! Flags shared by the commands that start runs or select files (`backup start`, `backup files`,
//! `restore start` and `schedule create`): path filters and transfer limits, and how they become the
//! API's `PathFilter` and `TransferLimits`.
//!
//! A flag left out leaves its field unset, so the server's default applies: commands never spell
//! out defaults of their own.

use clap::Args;

use coffer_client::proto;

use crate::cli::format::{self, NONE};
use crate::cli::parse::parse_byte_rate;

/// `--include` and `--exclude`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct FilterArgs {
    /// Only files whose absolute path matches this glob ('*' within a directory, '**' across
    /// directories, e.g. '**/keyspace1/**'). Repeat for more; without it, every file.
    #[arg(long = "include", value_name = "GLOB", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub include: Vec<String>,
    /// Leave out files whose absolute path matches this glob, even when included. Repeat for more.
    #[arg(long = "exclude", value_name = "GLOB", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub exclude: Vec<String>,
}

impl FilterArgs {
    /// The filter, or `None` (every file) when no pattern is given.
    pub fn into_filter(self) -> Option<proto::PathFilter> {
        if self.include.is_empty() && self.exclude.is_empty() {
            None
        } else {
            Some(proto::PathFilter {
                include: self.include,
                exclude: self.exclude,
            })
        }
    }
}

/// `--rate-limit`, `--concurrency` and `--node-parallelism`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct LimitArgs {
    /// Most bytes per second each node transfers, e.g. 50MiB/s, 1G or 1000 (K, M, G and KiB, MiB,
    /// GiB count in 1024s; KB, MB, GB in 1000s). Default: unlimited.
    #[arg(long, value_name = "RATE", value_parser = parse_byte_rate)]
    pub rate_limit: Option<i64>,
    /// Objects each node uploads or downloads at once, 1 to 1024. Default: the agent's setting.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub concurrency: Option<i32>,
    /// Nodes that transfer data at once. Default: every node of the run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub node_parallelism: Option<i32>,
}

impl LimitArgs {
    /// The limits, or `None` (the defaults) when no limit flag is given.
    pub fn into_limits(self) -> Option<proto::TransferLimits> {
        if self == Self::default() {
            return None;
        }
        Some(proto::TransferLimits {
            rate_limit_bytes_per_second: self.rate_limit.unwrap_or(0),
            concurrency: self.concurrency.unwrap_or(0),
            node_parallelism: self.node_parallelism.unwrap_or(0),
        })
    }
}

/// A filter in one line: `include a, b; exclude c`; [`NONE`] when it selects every file.
pub fn describe_filter(filter: Option<&proto::PathFilter>) -> String {
    let Some(filter) = filter else {
        return NONE.to_owned();
    };
    let mut parts = Vec::new();
    if !filter.include.is_empty() {
        parts.push(format!("include {}", filter.include.join(", ")));
    }
    if !filter.exclude.is_empty() {
        parts.push(format!("exclude {}", filter.exclude.join(", ")));
    }
    if parts.is_empty() {
        NONE.to_owned()
    } else {
        parts.join("; ")
    }
}

/// Limits in one line: `rate 50.0 MiB/s per node, concurrency 8, 2 nodes at once`; `defaults`
/// when none is set.
pub fn describe_limits(limits: Option<&proto::TransferLimits>) -> String {
    let Some(limits) = limits else {
        return "defaults".to_owned();
    };
    let mut parts = Vec::new();
    if let Ok(rate) = u64::try_from(limits.rate_limit_bytes_per_second)
        && rate > 0
    {
        parts.push(format!("rate {} per node", format::rate(rate)));
    }
    if limits.concurrency > 0 {
        parts.push(format!("concurrency {}", limits.concurrency));
    }
    if limits.node_parallelism > 0 {
        parts.push(format!("{} nodes at once", limits.node_parallelism));
    }
    if parts.is_empty() {
        "defaults".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_leave_filter_and_limits_unset() {
        assert_eq!(FilterArgs::default().into_filter(), None);
        assert_eq!(LimitArgs::default().into_limits(), None);
        assert_eq!(describe_filter(None), "-");
        assert_eq!(describe_limits(None), "defaults");
    }

    #[test]
    fn given_flags_fill_only_their_fields() {
        let limits = LimitArgs {
            rate_limit: Some(50 << 20),
            concurrency: None,
            node_parallelism: Some(2),
        }
        .into_limits();
        assert_eq!(
            limits,
            Some(proto::TransferLimits {
                rate_limit_bytes_per_second: 50 << 20,
                concurrency: 0,
                node_parallelism: 2,
            })
        );
        assert_eq!(
            describe_limits(limits.as_ref()),
            "rate 50.0 MiB/s per node, 2 nodes at once"
        );

        let filter = FilterArgs {
            include: vec!["**/ks1/**".to_owned()],
            exclude: vec!["**/*.tmp".to_owned(), "**/snapshots/**".to_owned()],
        }
        .into_filter();
        assert_eq!(
            describe_filter(filter.as_ref()),
            "include **/ks1/**; exclude **/*.tmp, **/snapshots/**"
        );
    }
}
