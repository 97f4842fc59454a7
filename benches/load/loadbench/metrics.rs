//! tokengate's `/metrics`, scraped around each run: its own counts of what
//! it decided and how it checked its limits are the exact success checks.

/// One sample: (metric name, the labels between the braces, value).
pub type Series = (String, String, f64);

/// `/metrics` of tokengate's admin port.
pub async fn scrape(port: u16) -> anyhow::Result<Vec<Series>> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse(&text))
}

/// The samples of a Prometheus text exposition (comments skipped).
pub fn parse(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels),
                None => (series, ""),
            };
            Some((name.to_owned(), labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples selected by `pick`.
pub fn total(all: &[Series], pick: impl Fn(&str, &str) -> bool) -> f64 {
    all.iter()
        .filter(|(n, l, _)| pick(n, l))
        .map(|(_, _, v)| v)
        .sum()
}

/// The growth of the samples selected by `pick` between two scrapes.
pub fn delta(before: &[Series], after: &[Series], pick: impl Fn(&str, &str) -> bool) -> u64 {
    (total(after, &pick) - total(before, &pick))
        .max(0.0)
        .round() as u64
}
