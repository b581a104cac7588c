//! The label-shift figure: accuracy (plain vs aggregated) and the learned expert weights across the
//! test distributions, as one PNG.

use anyhow::{anyhow, Result};
use longtail_sade::shift::ShiftResult;
use plotters::prelude::*;
use std::path::Path;

use super::register_font;

/// Short column label: `F50`, `Uni`, `B2`, ….
pub fn short_name(name: &str) -> String {
    if let Some(r) = name.strip_prefix("forward") {
        format!("F{r}")
    } else if let Some(r) = name.strip_prefix("backward") {
        format!("B{r}")
    } else if name == "uniform" {
        "Uni".into()
    } else {
        name.into()
    }
}

/// Colours of the experts' weight lines (forward, uniform, backward for SADE).
const EXPERT_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Writes a 1280×520 PNG to `path`: left, overall accuracy (%) of plain averaging and of
/// test-time aggregation per distribution; right, each expert's learned weight. `title` heads it;
/// `expert_names` label the weight lines (`expert e` when shorter than the weights).
pub fn write_png(
    results: &[ShiftResult],
    path: &Path,
    title: &str,
    expert_names: &[&str],
) -> Result<()> {
    if results.is_empty() {
        return Err(anyhow!("nothing to plot: no distribution was evaluated"));
    }
    register_font()?;
    let root = BitMapBackend::new(path, (1280, 520)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(title, ("sans-serif", 22).into_font())
        .map_err(err)?;
    let (left, right) = root.split_horizontally(640);
    let n = results.len();
    let labels: Vec<String> = results
        .iter()
        .map(|r| short_name(&r.distribution))
        .collect();
    let x_range = -0.5f64..(n as f64 - 0.5);
    let fmt = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };

    // Accuracy panel.
    let acc = |f: &dyn Fn(&ShiftResult) -> f64| -> Vec<(f64, f64)> {
        results
            .iter()
            .enumerate()
            .map(|(i, r)| (i as f64, 100.0 * f(r)))
            .collect()
    };
    let plain = acc(&|r| r.plain.overall);
    let agg = acc(&|r| r.aggregated.overall);
    let (lo, hi) = plain
        .iter()
        .chain(&agg)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let pad = ((hi - lo) * 0.1).max(1.0);
    let mut chart = ChartBuilder::on(&left)
        .caption("top-1 accuracy (%)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x_range.clone(), (lo - pad).max(0.0)..(hi + pad).min(100.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&fmt)
        .x_desc("test class distribution")
        .draw()
        .map_err(err)?;
    for (points, colour, name) in [
        (plain, RGBColor(120, 120, 120), "plain (mean of experts)"),
        (agg, RGBColor(214, 39, 40), "test-time aggregation"),
    ] {
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;

    // Weight panel.
    let experts = results[0].weights.len();
    let wmax = results
        .iter()
        .flat_map(|r| r.weights.iter().copied())
        .fold(0.0f64, f64::max);
    let mut chart = ChartBuilder::on(&right)
        .caption("learned expert weights", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x_range, 0.0..(wmax * 1.15).clamp(0.5, 1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&fmt)
        .x_desc("test class distribution")
        .draw()
        .map_err(err)?;
    for e in 0..experts {
        let colour = EXPERT_COLOURS[e % EXPERT_COLOURS.len()];
        let points: Vec<(f64, f64)> = results
            .iter()
            .enumerate()
            .map(|(i, r)| (i as f64, r.weights.get(e).copied().unwrap_or(f64::NAN)))
            .collect();
        let name = expert_names
            .get(e)
            .map_or_else(|| format!("expert {e}"), |s| s.to_string());
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
