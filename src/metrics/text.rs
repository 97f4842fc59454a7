//! The exposition formats. `prometheus-client` writes OpenMetrics; the
//! classic Prometheus text format (0.0.4) differs from it in three ways that
//! matter to parsers such as `promtool check metrics`: no `# EOF`, no
//! `# UNIT`, and a counter family's HELP and TYPE lines name the sample
//! (`x_total`) rather than the family (`x`). The classic form is derived
//! from the OpenMetrics one by exactly those edits.

use prometheus_client::registry::Registry;

/// The OpenMetrics content type.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text content type.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (Prometheus's scraper does).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Encodes the registry as OpenMetrics or as classic text.
pub(super) fn encode(registry: &Registry, openmetrics: bool) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an error would only cut the exposition short.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    if openmetrics { out } else { classic(&out) }
}

/// The classic text form of an OpenMetrics exposition.
fn classic(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counter_samples_and_drops_the_eof() {
        let om = "# HELP x Things.\n# TYPE x counter\nx_total{a=\"b\"} 1\n# HELP g A gauge.\n# TYPE g gauge\n# UNIT g seconds\ng 2\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{a=\"b\"} 1\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
    }

    #[test]
    fn accept_headers_choose_the_format() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
