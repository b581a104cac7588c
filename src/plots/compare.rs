//! The figure of `longtail compare`: per-class test accuracy against the class's training size,
//! one line per entry (mean over seeds), so that where a method gains (head or tail) is visible.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::register_font;
use crate::cli::compare::Row;

/// Line colours, cycled (matplotlib's tab10).
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Mean accuracy over seeds of each class (`None` where no seed has test images of it).
pub fn mean_per_class(row: &Row, classes: usize) -> Vec<Option<f64>> {
    (0..classes)
        .map(|c| {
            let v: Vec<f64> = row
                .seeds
                .iter()
                .filter_map(|s| s.per_class.get(c).copied().flatten())
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

/// Writes a 1100×640 PNG to `path`: x = training images of the class (log scale), y = its test
/// accuracy (%), classes joined from the largest to the smallest, one line per row.
pub fn write_png(rows: &[Row], class_counts: &[usize], path: &Path) -> Result<()> {
    if rows.is_empty() || class_counts.is_empty() {
        return Err(anyhow!("nothing to plot: no entry or no class"));
    }
    register_font()?;
    let root = BitMapBackend::new(path, (1100, 640)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let lo = class_counts
        .iter()
        .copied()
        .filter(|&n| n > 0)
        .min()
        .unwrap_or(1) as f64;
    let hi = class_counts.iter().copied().max().unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "per-class test accuracy against training class size (mean over seeds)",
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("training images of the class (log scale)")
        .y_desc("test accuracy (%)")
        .draw()
        .map_err(err)?;
    // Classes from head to tail.
    let mut order: Vec<usize> = (0..class_counts.len())
        .filter(|&c| class_counts[c] > 0)
        .collect();
    order.sort_by_key(|&c| std::cmp::Reverse(class_counts[c]));
    for (i, row) in rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let acc = mean_per_class(row, class_counts.len());
        let points: Vec<(f64, f64)> = order
            .iter()
            .filter_map(|&c| acc[c].map(|a| (class_counts[c] as f64, 100.0 * a)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(row.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
