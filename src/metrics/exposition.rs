//! The Prometheus text exposition format, version 0.0.4: what `GET
//! /metrics` answers (`text/plain; version=0.0.4`).
//!
//! Each family is written whole: `# HELP`, `# TYPE`, then its samples, so a
//! family with no series yet still names itself.

use std::fmt::Write;

use super::family::{Counter, Family, Gauge, Histogram, HistogramSnapshot, Label};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn finish(self) -> String {
        self.out
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
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
        let _ = writeln!(self.out, " {value}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        self.sample(name, &[], &value.to_string());
    }

    pub fn counters<const N: usize>(&mut self, name: &str, help: &str, f: &Family<Counter, N>) {
        self.header(name, help, "counter");
        for (values, counter) in f.series() {
            let labels = pairs(f.label_names(), &values);
            self.sample(name, &labels, &counter.get().to_string());
        }
    }

    /// A counter family whose values are known at scrape time.
    pub fn counters_of(&mut self, name: &str, help: &str, series: &[(&[(&str, &str)], u64)]) {
        self.header(name, help, "counter");
        for (labels, value) in series {
            self.sample(name, labels, &value.to_string());
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.gauges_of(name, help, &[(&[], value)]);
    }

    pub fn gauge_of(&mut self, name: &str, help: &str, gauge: &Gauge) {
        self.gauge(name, help, gauge.get());
    }

    /// A gauge family whose values are known at scrape time.
    pub fn gauges_of(&mut self, name: &str, help: &str, series: &[(&[(&str, &str)], f64)]) {
        self.header(name, help, "gauge");
        for (labels, value) in series {
            self.sample(name, labels, &number(*value));
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        self.histogram_samples(name, &[], &h.snapshot());
    }

    pub fn histograms<const N: usize>(&mut self, name: &str, help: &str, f: &Family<Histogram, N>) {
        self.header(name, help, "histogram");
        for (values, h) in f.series() {
            let labels = pairs(f.label_names(), &values);
            self.histogram_samples(name, &labels, &h.snapshot());
        }
    }

    fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], s: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in &s.buckets {
            let le = bound.map_or_else(|| "+Inf".to_owned(), number);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, &count.to_string());
        }
        self.sample(&format!("{name}_sum"), labels, &number(s.sum));
        self.sample(&format!("{name}_count"), labels, &s.count.to_string());
    }
}

fn pairs<'a, const N: usize>(
    names: &'a [&'static str; N],
    values: &'a [Label; N],
) -> Vec<(&'a str, &'a str)> {
    names
        .iter()
        .zip(values.iter())
        .map(|(n, v)| (*n, v.as_ref()))
        .collect()
}

/// A sample value as Prometheus reads floats.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_in_the_text_format() {
        static BOUNDS: [f64; 2] = [0.5, 1.0];
        let requests: Family<Counter, 2> =
            Family::new(["transport", "operation"], Counter::default);
        requests
            .with([Label::Borrowed("mcp"), Label::Borrowed("recall")])
            .add(3);
        let latency = Histogram::new(&BOUNDS);
        latency.observe(0.25);
        latency.observe(2.0);
        let mut page = Exposition::default();
        page.counters("engram_requests_total", "Requests.", &requests);
        page.histogram("engram_x_seconds", "X.", &latency);
        page.gauges_of("engram_g", "G \\ \"q\"", &[(&[("state", "a\"b\n")], 1.5)]);
        assert_eq!(
            page.finish(),
            "# HELP engram_requests_total Requests.\n\
             # TYPE engram_requests_total counter\n\
             engram_requests_total{transport=\"mcp\",operation=\"recall\"} 3\n\
             # HELP engram_x_seconds X.\n\
             # TYPE engram_x_seconds histogram\n\
             engram_x_seconds_bucket{le=\"0.5\"} 1\n\
             engram_x_seconds_bucket{le=\"1\"} 1\n\
             engram_x_seconds_bucket{le=\"+Inf\"} 2\n\
             engram_x_seconds_sum 2.25\n\
             engram_x_seconds_count 2\n\
             # HELP engram_g G \\\\ \"q\"\n\
             # TYPE engram_g gauge\n\
             engram_g{state=\"a\\\"b\\n\"} 1.5\n"
        );
    }
}
