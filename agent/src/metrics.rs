//! The Prometheus text exposition format (version 0.0.4), written by hand: a handful of
//! families, no registry, and exactly the bytes `promtool check metrics` expects.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Builds one exposition document, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family. Counter names end in `_total`, as Prometheus requires.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert!(valid_name(name), "{name}");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
        let kind_name = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind_name}");
        Family { out: &mut self.out, name: name.to_owned() }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

pub struct Family<'a> {
    out: &'a mut String,
    name: String,
}

impl Family<'_> {
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_value(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }
}

impl Family<'_> {
    /// One histogram series: `buckets` are `(upper bound, cumulative count)` ending with
    /// `+Inf`, then its sum and count.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: impl Iterator<Item = (f64, u64)>,
        sum: f64,
        count: u64,
    ) -> &mut Self {
        let name = std::mem::take(&mut self.name);
        for (bound, n) in buckets {
            let le = if bound.is_infinite() { "+Inf".to_owned() } else { format_value(bound) };
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.name = format!("{name}_bucket");
            self.sample(&with_le, n as f64);
        }
        self.name = format!("{name}_sum");
        self.sample(labels, sum);
        self.name = format!("{name}_count");
        self.sample(labels, count as f64);
        self.name = name;
        self
    }
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_families_with_escaped_labels() {
        let mut e = Exposition::default();
        e.family("nm_things_total", Kind::Counter, "Things.\nCounted.").sample(&[("a", "x\"y\\z")], 3.0);
        e.family("nm_level", Kind::Gauge, "A level.").sample(&[], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP nm_things_total Things.\\nCounted.\n# TYPE nm_things_total counter\n\
             nm_things_total{a=\"x\\\"y\\\\z\"} 3\n# HELP nm_level A level.\n# TYPE nm_level gauge\nnm_level 0.5\n"
        );
    }
}
