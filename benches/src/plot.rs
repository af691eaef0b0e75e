//! The SVG report of a run: throughput and p99 over time, and the latency
//! percentile distribution.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::stats::SecondSample;

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {error}")
}

/// Writes `path` with three panels: ok/s and errors/s per second, p99 of
/// each second's OK answers, and latency by percentile (the percentile axis
/// in "nines"). Text is written as SVG <text>: no fonts are needed.
pub fn write_svg(
    path: &Path,
    title: &str,
    series: &[SecondSample],
    latency: &Histogram<u64>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(plot_error)?;
    let panels = root.split_evenly((3, 1));
    let seconds = series.len().max(1) as f64;

    let max_ok = series
        .iter()
        .map(|s| s.ok.max(s.errors))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut throughput = ChartBuilder::on(&panels[0])
        .caption("throughput per second", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..max_ok)
        .map_err(plot_error)?;
    throughput
        .configure_mesh()
        .max_light_lines(0)
        .x_desc("second")
        .draw()
        .map_err(plot_error)?;
    throughput
        .draw_series(LineSeries::new(
            series.iter().map(|s| (s.second as f64, s.ok as f64)),
            &BLUE,
        ))
        .map_err(plot_error)?
        .label("ok/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if series.iter().any(|s| s.errors > 0) {
        throughput
            .draw_series(LineSeries::new(
                series.iter().map(|s| (s.second as f64, s.errors as f64)),
                &RED,
            ))
            .map_err(plot_error)?
            .label("errors/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    throughput
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;

    let max_p99 = series.iter().map(|s| s.p99_ms).fold(0.0, f64::max).max(0.1) * 1.1;
    let mut p99 = ChartBuilder::on(&panels[1])
        .caption("p99 latency per second (ms)", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..max_p99)
        .map_err(plot_error)?;
    p99.configure_mesh()
        .max_light_lines(0)
        .x_desc("second")
        .draw()
        .map_err(plot_error)?;
    p99.draw_series(LineSeries::new(
        series.iter().map(|s| (s.second as f64, s.p99_ms)),
        &MAGENTA,
    ))
    .map_err(plot_error)?;

    // Percentile axis as "nines": 0 = p0, 1 = p90, 2 = p99, 3 = p99.9 ...
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|step| {
            let nines = f64::from(step) / 100.0;
            let quantile = 1.0 - 10f64.powf(-nines);
            (
                nines,
                latency.value_at_quantile(quantile.min(1.0)) as f64 / 1_000.0,
            )
        })
        .collect();
    let max_latency = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.1;
    let mut distribution = ChartBuilder::on(&panels[2])
        .margin_right(25)
        .caption("latency by percentile (ms)", ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, 0f64..max_latency)
        .map_err(plot_error)?;
    distribution
        .configure_mesh()
        .max_light_lines(0)
        .x_labels(5)
        .x_label_formatter(&|nines| percentile_label(*nines))
        .x_desc("percentile")
        .y_desc("ms")
        .draw()
        .map_err(plot_error)?;
    distribution
        .draw_series(LineSeries::new(points, &BLACK))
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// "p99.9" for 3 nines.
fn percentile_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let text = format!("{percent:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("p{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(0.0), "p0");
        assert_eq!(percentile_label(1.0), "p90");
        assert_eq!(percentile_label(2.0), "p99");
        assert_eq!(percentile_label(3.0), "p99.9");
        assert_eq!(percentile_label(4.0), "p99.99");
    }
}
