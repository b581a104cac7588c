//! PNG plots of an [`UncertaintyReport`]: the risk–coverage curve and the reliability diagram.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use longtail_tlc::report::{ScoreReport, UncertaintyReport};
use plotters::prelude::*;

use super::register_font;

/// The plot files [`write_plots`] writes.
pub const RISK_COVERAGE_PNG: &str = "risk_coverage.png";
/// See [`RISK_COVERAGE_PNG`].
pub const RELIABILITY_PNG: &str = "reliability.png";

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn plot_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e}", path.display())
}

/// Writes `risk_coverage.png` and `reliability.png` into `dir` (created if missing) and returns
/// their paths.
pub fn write_plots(report: &UncertaintyReport, dir: &Path) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the plot directory {}", dir.display()))?;
    let title = format!("{} on {}", report.method, report.dataset);
    let rc = dir.join(RISK_COVERAGE_PNG);
    risk_coverage(&report.scores, &title, &rc)?;
    let rel = dir.join(RELIABILITY_PNG);
    reliability(&report.scores, &title, &rel)?;
    Ok(vec![rc, rel])
}

/// At most `max` evenly spaced points of a curve (always keeping the last).
fn thin(xs: &[f64], ys: &[f64], max: usize) -> Vec<(f64, f64)> {
    let step = xs.len().div_ceil(max).max(1);
    let mut pts: Vec<(f64, f64)> = xs
        .iter()
        .zip(ys)
        .step_by(step)
        .map(|(&x, &y)| (x, y))
        .collect();
    if let (Some(&x), Some(&y)) = (xs.last(), ys.last()) {
        if pts.last() != Some(&(x, y)) {
            pts.push((x, y));
        }
    }
    pts
}

fn risk_coverage(scores: &[ScoreReport], title: &str, path: &Path) -> Result<()> {
    let err = plot_err(path);
    let root = BitMapBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let y_max = scores
        .iter()
        .flat_map(|s| s.risk_coverage.risk.iter().copied())
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Risk-coverage: {title}"), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..1f64, 0f64..y_max)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc("coverage (most confident first)")
        .y_desc("risk (error rate of accepted)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(&err)?;
    for (i, s) in scores.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts = thin(&s.risk_coverage.coverage, &s.risk_coverage.risk, 2000);
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(&err)?
            .label(format!("{} (AURC {:.4})", s.score, s.overall.aurc))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

fn reliability(scores: &[ScoreReport], title: &str, path: &Path) -> Result<()> {
    let err = plot_err(path);
    let n = scores.len().max(1);
    let root = BitMapBackend::new(path, (480 * n as u32, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let (top, body) = root.split_vertically(40);
    top.titled(
        &format!("Reliability (15 bins): {title}"),
        ("sans-serif", 24),
    )
    .map_err(&err)?;
    for (i, (area, s)) in body.split_evenly((1, n)).iter().zip(scores).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: ECE {:.4}", s.score, s.overall.ece15),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("confidence")
            .y_desc("accuracy")
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(&err)?;
        // Accuracy of each non-empty bin, and the gap to its mean confidence.
        chart
            .draw_series(s.reliability.iter().filter_map(|b| {
                let acc = b.accuracy?;
                Some(Rectangle::new(
                    [(b.lower, 0.0), (b.upper, acc)],
                    colour.mix(0.75).filled(),
                ))
            }))
            .map_err(&err)?
            .label("accuracy")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], colour.filled()));
        chart
            .draw_series(s.reliability.iter().filter_map(|b| {
                let (acc, conf) = (b.accuracy?, b.mean_confidence?);
                Some(Rectangle::new(
                    [(b.lower, acc.min(conf)), (b.upper, acc.max(conf))],
                    RED.mix(0.3).filled(),
                ))
            }))
            .map_err(&err)?
            .label("gap to confidence")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], RED.mix(0.3).filled()));
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(&err)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(&err)?;
    }
    root.present().map_err(&err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_keeps_ends_and_bounds_points() {
        let xs: Vec<f64> = (1..=5000).map(|i| i as f64 / 5000.0).collect();
        let ys: Vec<f64> = xs.iter().map(|x| x * 0.5).collect();
        let p = thin(&xs, &ys, 2000);
        assert!(p.len() <= 2001, "{}", p.len());
        assert_eq!(p[0], (xs[0], ys[0]));
        assert_eq!(*p.last().unwrap(), (1.0, 0.5));
        assert_eq!(thin(&xs[..3], &ys[..3], 2000).len(), 3);
    }

    #[test]
    fn font_registers() {
        register_font().unwrap();
    }
}
