//! Fixed-width text tables that fit an 80-column terminal: long cells are cut with `…`.

use std::fmt::Write as _;

pub struct Table {
    widths: Vec<usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns` pairs a header with its width; widths plus one space between columns should
    /// stay within 80.
    pub fn new(columns: &[(&str, usize)]) -> Self {
        let widths = columns.iter().map(|(_, w)| *w).collect();
        let header = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
        Self { widths, rows: vec![header] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Rows so far, the header included (the index the next row's line will have).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, width) in self.widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let last = i + 1 == self.widths.len();
                let text = fit(cell, *width);
                if last {
                    line.push_str(&text);
                } else {
                    let _ = write!(line, "{text:<width$} ", width = *width);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn fit(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        cell.to_owned()
    } else {
        let mut cut: String = cell.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_long_cells_and_keeps_width() {
        let mut t = Table::new(&[("A", 5), ("B", 3)]);
        t.row(vec!["abcdefgh".into(), "xyzw".into()]);
        assert_eq!(t.render(), "A     B\nabcd… xy…\n");
    }
}
