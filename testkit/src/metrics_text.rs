//! Reading a Prometheus text scrape in tests.

/// Sum of the samples of `name` whose labels contain every `labels` pair
/// (written as `key="value"`).
pub fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            let (series, value) = rest.rsplit_once(' ')?;
            labels
                .iter()
                .all(|want| series.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
