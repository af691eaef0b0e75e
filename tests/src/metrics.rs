//! Reading a node's `/metrics` page (Prometheus text) in tests.

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape(pub String);

impl Scrape {
    /// The sum of the samples of `name` whose labels include every pair
    /// of `labels`; `None` when there is no such sample.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let matches = labels.iter().all(|(label, wanted)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{label}=\"{wanted}\""))
            });
            if !matches {
                continue;
            }
            if let Ok(value) = value.parse::<f64>() {
                found = Some(found.unwrap_or(0.0) + value);
            }
        }
        found
    }

    /// The upper bound of the histogram bucket holding quantile `q` of
    /// `name` (its `_bucket` series with `labels`): `None` without samples.
    pub fn quantile_bound(&self, name: &str, labels: &[(&str, &str)], q: f64) -> Option<f64> {
        let series = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in self.0.lines() {
            let Some(rest) = line.strip_prefix(&series) else {
                continue;
            };
            let Some((labels_part, count)) = rest.rsplit_once(' ') else {
                continue;
            };
            let matches = labels
                .iter()
                .all(|(label, wanted)| labels_part.contains(&format!("{label}=\"{wanted}\"")));
            let bound = labels_part
                .split("le=\"")
                .nth(1)
                .and_then(|tail| tail.split('"').next())
                .and_then(|le| {
                    if le == "+Inf" {
                        Some(f64::INFINITY)
                    } else {
                        le.parse().ok()
                    }
                });
            if let (true, Some(bound), Ok(count)) = (matches, bound, count.parse::<f64>()) {
                match buckets.iter_mut().find(|(existing, _)| *existing == bound) {
                    Some((_, total)) => *total += count,
                    None => buckets.push((bound, count)),
                }
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map(|(bound, _)| *bound)
    }

    /// Like [`Scrape::value`], 0 when absent.
    pub fn or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels_and_summed() {
        let scrape = Scrape(
            "# TYPE skuld_returns gauge\nskuld_returns{state=\"REQUESTED\"} 2\nskuld_returns{state=\"CLOSED\"} 1\nskuld_returns_total 9\nskuld_up 1\n"
                .into(),
        );
        assert_eq!(
            scrape.value("skuld_returns", &[("state", "REQUESTED")]),
            Some(2.0)
        );
        assert_eq!(scrape.value("skuld_returns", &[]), Some(3.0));
        assert_eq!(scrape.value("skuld_up", &[]), Some(1.0));
        assert_eq!(
            scrape.value("skuld_returns", &[("state", "APPROVED")]),
            None
        );
        assert_eq!(scrape.value("skuld_missing", &[]), None);
    }
}
