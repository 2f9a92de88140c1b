//! A minimal aligned plain-text table for human output, and aligned `Label: value` lines for
//! showing one object.
//!
//! Columns are left-aligned, separated by three spaces, and sized to their widest cell; the last
//! column is not padded, so no line ends in spaces. Control characters in cells become spaces, so
//! a multi-line message can never break the alignment (or be mistaken for another row).

/// Rows of text under a header, rendered with [`Table::render`].
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

const COLUMN_GAP: &str = "   ";

impl Table {
    /// A table with these column titles.
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            header: header.iter().map(|title| clean(title)).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. Missing cells render empty; extra cells are kept as extra columns.
    pub fn push(&mut self, row: impl IntoIterator<Item = String>) {
        self.rows
            .push(row.into_iter().map(|cell| clean(&cell)).collect());
    }

    /// The table as lines of text, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = std::iter::once(&self.header)
            .chain(&self.rows)
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (index, width) in widths.iter().enumerate() {
                let cell = row.get(index).map_or("", String::as_str);
                if index > 0 {
                    line.push_str(COLUMN_GAP);
                }
                line.push_str(cell);
                let padding = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', padding));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One object's fields as `Label:` and value lines, the values aligned one column after the
/// longest label. Values are cleaned like table cells, and no line ends in spaces.
pub fn fields<'a>(rows: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let rows: Vec<(&str, String)> = rows.into_iter().collect();
    let width = rows
        .iter()
        .map(|(label, _)| label.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        let line = format!("{:<width$}  {}", format!("{label}:"), clean(&value));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Replaces control characters (newlines, tabs) with spaces.
fn clean(cell: &str) -> String {
    cell.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut table = Table::new(["NAME", "ID", "NODES"]);
        table.push(["prod".to_owned(), "1".to_owned(), "3".to_owned()]);
        table.push(["staging-eu".to_owned(), "22".to_owned(), "12".to_owned()]);
        assert_eq!(
            table.render(),
            "NAME         ID   NODES\n\
             prod         1    3\n\
             staging-eu   22   12\n"
        );
    }

    #[test]
    fn no_trailing_spaces_and_empty_last_cells() {
        let mut table = Table::new(["A", "MESSAGE"]);
        table.push(["x".to_owned(), String::new()]);
        table.push(["y".to_owned(), "long message".to_owned()]);
        let rendered = table.render();
        assert!(
            rendered.lines().all(|line| !line.ends_with(' ')),
            "{rendered:?}"
        );
        assert_eq!(rendered, "A   MESSAGE\nx\ny   long message\n");
    }

    #[test]
    fn control_characters_do_not_break_rows() {
        let mut table = Table::new(["A", "B"]);
        table.push(["a\nb".to_owned(), "c\td".to_owned()]);
        assert_eq!(table.render(), "A     B\na b   c d\n");
    }

    #[test]
    fn header_only_and_short_rows() {
        let mut table = Table::new(["A", "B", "C"]);
        assert_eq!(table.render(), "A   B   C\n");
        table.push(["wide-cell".to_owned()]);
        assert_eq!(table.render(), "A           B   C\nwide-cell\n");
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut table = Table::new(["LATENCY", "X"]);
        table.push(["850µs".to_owned(), "y".to_owned()]);
        assert_eq!(table.render(), "LATENCY   X\n850µs     y\n");
    }

    #[test]
    fn fields_align_values_after_the_longest_label() {
        let rendered = fields([
            ("Name", "prod".to_owned()),
            ("Secret access key", "env:AWS_SECRET".to_owned()),
            ("Empty", String::new()),
        ]);
        assert_eq!(
            rendered,
            "Name:               prod\n\
             Secret access key:  env:AWS_SECRET\n\
             Empty:\n"
        );
    }
}
