//! Line plots (SVG, plotters) of a run's metrics, or of several runs overlaid: each figure has
//! two panels, the metric against generator iterations and against training seconds.

use crate::atomic::write_atomic;
use crate::metrics::Record;
use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;

/// One line: `(iteration, seconds, value)` points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in iteration order; non-finite values are left out when drawing.
    pub points: Vec<(f64, f64, f64)>,
}

impl Series {
    /// A series of `value(record)` over the records where it is defined.
    pub fn from_records(
        name: impl Into<String>,
        records: &[Record],
        value: impl Fn(&Record) -> Option<f64>,
    ) -> Self {
        Self {
            name: name.into(),
            points: records
                .iter()
                .filter_map(|r| value(r).map(|v| (r.step as f64, r.elapsed_s, v)))
                .filter(|p| p.2.is_finite())
                .collect(),
        }
    }
}

/// A figure: a title, the y-axis label and its lines.
pub struct Figure<'a> {
    /// File name inside the plot folder, e.g. `swd.svg`.
    pub file: &'a str,
    /// Title over both panels.
    pub title: &'a str,
    /// What the y axis shows.
    pub y_label: &'a str,
    /// The lines.
    pub series: Vec<Series>,
}

const PANEL: (u32, u32) = (560, 380);

/// Line colours, distinguishable on white (matplotlib's "tab10").
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Writes `figure` into `dir` (atomically); nothing when it has no point.
pub fn draw(dir: &Path, figure: &Figure) -> Result<()> {
    if figure.series.iter().all(|s| s.points.is_empty()) {
        return Ok(());
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (2 * PANEL.0, PANEL.1)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let root = root
            .titled(figure.title, ("sans-serif", 20))
            .map_err(plot_error)?;
        let (left, right) = root.split_horizontally(PANEL.0);
        panel(&left, figure, "generator iteration", |p| p.0)?;
        panel(&right, figure, "training seconds", |p| p.1)?;
        root.present().map_err(plot_error)?;
    }
    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join(figure.file), svg.as_bytes())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    figure: &Figure,
    x_label: &str,
    x_of: impl Fn(&(f64, f64, f64)) -> f64,
) -> Result<()> {
    let all = || figure.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(all().map(&x_of));
    let (y0, y1) = range(all().map(|p| p.2));
    // Head room for the legend box (upper right), a line of it per series.
    let y1 = y1 + (y1 - y0) * 0.09 * figure.series.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(figure.y_label)
        .draw()
        .map_err(plot_error)?;
    for (i, series) in figure.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()].to_rgba();
        chart
            .draw_series(LineSeries::new(
                series.points.iter().map(|p| (x_of(p), p.2)),
                color.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(series.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// `[min, max]` with a margin; a unit range around a constant.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 * hi.abs().max(1.0) {
        return (lo - 1.0, hi + 1.0);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// The figures of one run's metrics.
pub fn run_figures(records: &[Record]) -> Vec<Figure<'static>> {
    let s = |name: &str, f: fn(&Record) -> Option<f64>| Series::from_records(name, records, f);
    vec![
        Figure {
            file: "losses.svg",
            title: "Losses",
            y_label: "loss",
            series: vec![
                s("critic", |r| Some(r.critic_loss)),
                s("generator", |r| Some(r.generator_loss)),
                s("penalty", |r| r.penalty),
            ],
        },
        Figure {
            file: "wasserstein.svg",
            title: "Wasserstein estimate: mean f(real) - mean f(fake)",
            y_label: "W estimate",
            series: vec![s("W", |r| Some(r.wasserstein))],
        },
        Figure {
            file: "gradient_norms.svg",
            title: "Critic input-gradient norms ||grad_x f||",
            y_label: "norm",
            series: vec![
                s("real (mean)", |r| {
                    r.lipschitz.as_ref().map(|l| l.grad_real.mean)
                }),
                s("fake (mean)", |r| {
                    r.lipschitz.as_ref().map(|l| l.grad_fake.mean)
                }),
                s("interpolates (mean)", |r| {
                    r.lipschitz.as_ref().map(|l| l.grad_interpolates.mean)
                }),
                s("interpolates (max)", |r| {
                    r.lipschitz.as_ref().map(|l| l.grad_interpolates.max)
                }),
            ],
        },
        Figure {
            file: "lipschitz_bound.svg",
            title: "Product of the layers' kernel norms (log10)",
            y_label: "log10 bound",
            series: vec![s("bound", |r| {
                r.lipschitz.as_ref().map(|l| l.bound.log10())
            })],
        },
        Figure {
            file: "swd.svg",
            title: "Sliced Wasserstein distance to the data (x1e3, lower is better)",
            y_label: "SWD",
            series: vec![s("mean over levels", |r| r.swd.as_ref().map(|s| s.mean))],
        },
    ]
}

/// Redraws every figure of a run into `dir`.
pub fn run_plots(dir: &Path, records: &[Record]) -> Result<()> {
    for figure in run_figures(records) {
        draw(dir, &figure)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: usize, w: f64) -> Record {
        Record {
            step,
            critic_loss: -w,
            generator_loss: w / 2.0,
            wasserstein: w,
            penalty: None,
            sec_per_iter: 1.0,
            images_per_sec: 64.0,
            elapsed_s: step as f64 * 1.5,
            lipschitz: None,
            swd: None,
            fid: None,
            kid: None,
        }
    }

    #[test]
    fn figures_are_svg_files_with_one_path_per_series_and_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Record> = (1..=20).map(|i| record(i * 10, 1.0 / i as f64)).collect();
        run_plots(dir.path(), &records).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("wasserstein.svg")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("training seconds") && svg.contains("generator iteration"));
        // One polyline per panel for the single series, plus the legend's sample line.
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        // Figures without data (no diagnostics, no SWD here) are not written.
        assert!(!dir.path().join("swd.svg").exists());
        assert!(dir.path().join("losses.svg").exists());
    }

    #[test]
    fn non_finite_values_are_left_out() {
        let mut records = vec![record(1, 1.0), record(2, 2.0)];
        records[1].wasserstein = f64::NAN;
        let s = Series::from_records("w", &records, |r| Some(r.wasserstein));
        assert_eq!(s.points, vec![(1.0, 1.5, 1.0)]);
    }
}
