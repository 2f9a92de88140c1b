//! Where command output goes: data on stdout (a table or proto3 JSON), notes on stderr.

use std::fmt::Display;
use std::io::Write as _;

use clap::ValueEnum;

use coffer_client::to_json;

use crate::cli::CliError;

/// How data is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned plain-text tables, for people.
    Table,
    /// The response message as pretty-printed proto3 JSON, for scripts.
    Json,
}

/// Prints data on stdout in the chosen format and notes on stderr.
#[derive(Debug)]
pub struct Output {
    format: OutputFormat,
}

impl Output {
    pub fn new(format: OutputFormat) -> Self {
        Self { format }
    }

    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// Prints a response: as JSON, or as the text `human` renders.
    ///
    /// `human` may fail on a response it cannot show (a missing field); JSON never looks at it.
    pub fn response<M>(
        &self,
        message: &M,
        human: impl FnOnce(&M) -> Result<String, CliError>,
    ) -> Result<(), CliError>
    where
        M: prost::Message + prost::Name,
    {
        match self.format {
            OutputFormat::Json => self.json(&to_json(message)?),
            OutputFormat::Table => self.data(&human(message)?),
        }
    }

    /// Prints a JSON value, pretty.
    pub fn json(&self, value: &serde_json::Value) -> Result<(), CliError> {
        self.data(&format!("{value:#}\n"))
    }

    /// Prints a JSON value on one line, for streams of messages (NDJSON).
    pub fn json_line(&self, value: &serde_json::Value) -> Result<(), CliError> {
        self.data(&format!("{value}\n"))
    }

    /// Prints one page (or all pages) of a `List*` response.
    ///
    /// JSON is the response with its list `field` present even when empty; a table is what
    /// `human` renders, or `empty` on stderr when there is nothing to list. A next page token
    /// goes to stderr either way.
    pub fn list<M>(
        &self,
        message: &M,
        field: &str,
        len: usize,
        next_page_token: &str,
        empty: &str,
        human: impl FnOnce(&M) -> String,
    ) -> Result<(), CliError>
    where
        M: prost::Message + prost::Name,
    {
        match self.format {
            OutputFormat::Json => self.json(&with_list_field(to_json(message)?, field))?,
            OutputFormat::Table if len == 0 => self.note(empty),
            OutputFormat::Table => self.data(&human(message))?,
        }
        if !next_page_token.is_empty() {
            self.note(format_args!("next page token: {next_page_token}"));
        }
        Ok(())
    }

    /// Writes text to stdout as is.
    pub fn data(&self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(CliError::Output)
    }

    /// Writes a line to stderr: hints, confirmations, page tokens.
    pub fn note(&self, text: impl Display) {
        // Nowhere left to report a failing stderr.
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

/// Makes sure a list field is present in JSON output even when empty (proto3 JSON leaves empty
/// fields out), so `jq '.clusters[]'` works on an empty list too.
pub fn with_list_field(mut value: serde_json::Value, field: &str) -> serde_json::Value {
    if let Some(object) = value.as_object_mut() {
        object
            .entry(field)
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    }
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn empty_list_fields_are_added_and_full_ones_kept() {
        assert_eq!(
            with_list_field(json!({}), "clusters"),
            json!({ "clusters": [] })
        );
        assert_eq!(
            with_list_field(json!({ "clusters": [{ "name": "a" }] }), "clusters"),
            json!({ "clusters": [{ "name": "a" }] })
        );
    }
}
