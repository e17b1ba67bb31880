//! `compare`: train several configs with the same seed, data and budget, then write
//! `report.md` with a table, overlaid plots and the final sample grids side by side.

use crate::config::Config;
use crate::metrics::{self, Record};
use crate::plot::{self, Figure, Series};
use crate::sample::save_png;
use crate::train::{self, Ended, Start};
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use image::{DynamicImage, GenericImage, Rgb, RgbImage};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The budget every run gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Generator iterations (`train.iterations`), when given.
    pub iterations: Option<usize>,
    /// Training minutes (`train.max_minutes`), when given.
    pub minutes: Option<f64>,
}

/// SWD evaluations per run under an iteration budget (unless `--set output.eval_every=N`).
const EVALUATIONS: usize = 10;

/// Iterations when only a time budget is given: the clock decides.
const UNBOUNDED_ITERATIONS: usize = 1_000_000_000;

/// One compared run: its name (the config file's stem) and folder.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Column and legend name.
    pub name: String,
    /// The config file.
    pub config_path: PathBuf,
    /// The run folder, `OUT/name`.
    pub dir: PathBuf,
}

/// Names from the config files' stems, made unique with a suffix.
pub fn entries(configs: &[PathBuf], out: &Path) -> Vec<Entry> {
    let mut seen = HashSet::new();
    configs
        .iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map_or("run".into(), |s| s.to_string_lossy().into_owned());
            let mut name = stem.clone();
            let mut k = 2;
            while !seen.insert(name.clone()) {
                name = format!("{stem}-{k}");
                k += 1;
            }
            Entry {
                dir: out.join(&name),
                name,
                config_path: path.clone(),
            }
        })
        .collect()
}

/// A config with the shared overrides and the budget applied; evaluation switched on.
pub fn load_config(path: &Path, overrides: &[String], budget: Budget) -> Result<Config> {
    let mut all = overrides.to_vec();
    match (budget.iterations, budget.minutes) {
        (Some(n), _) => all.push(format!("train.iterations={n}")),
        (None, Some(_)) => all.push(format!("train.iterations={UNBOUNDED_ITERATIONS}")),
        (None, None) => {}
    }
    if let Some(m) = budget.minutes {
        all.push(format!("train.max_minutes={m:?}"));
    }
    let user_sets_eval = overrides
        .iter()
        .any(|o| o.trim_start().starts_with("output.eval_every"));
    let mut config = Config::load(path, &all)?;
    config.resolve_data_dir()?;
    if !user_sets_eval {
        // About ten evaluations per run, so that the SWD curves overlay and SWD at equal
        // training time has a value; with a time budget the config's period stays.
        if let Some(n) = budget.iterations {
            config.output.eval_every = n.div_ceil(EVALUATIONS).max(1);
        } else if config.output.eval_every == 0 {
            config.output.eval_every = usize::MAX; // at the end only
        }
    }
    Ok(config)
}

/// Trains every entry in turn (each config validated before any run starts), then writes the
/// report. With `seeds` > 1, each config runs with its seed and the `seeds - 1` following ones
/// (folders `OUT/NAME/seed-S`, all configs of one seed before the next seed), and the report
/// adds the mean and spread over seeds with a verdict. Returns the report's path, and whether
/// the runs finished (when interrupted the report covers the runs so far).
pub fn compare(
    entries: &[Entry],
    overrides: &[String],
    budget: Budget,
    seeds: usize,
    out: &Path,
    force: bool,
    device: &Device,
    interrupt: &AtomicBool,
) -> Result<(PathBuf, Ended)> {
    if entries.is_empty() {
        bail!("--configs names no config: give two or more, e.g. configs/sn.toml configs/gp.toml");
    }
    if seeds == 0 {
        bail!("--seeds 0: give at least one seed");
    }
    let base: Vec<Config> = entries
        .iter()
        .map(|e| load_config(&e.config_path, overrides, budget))
        .collect::<Result<_>>()?;
    // (seed index, entry, config) in training order.
    let mut runs: Vec<(usize, Entry, Config)> = Vec::new();
    for k in 0..seeds {
        for (entry, config) in entries.iter().zip(&base) {
            if seeds == 1 {
                runs.push((k, entry.clone(), config.clone()));
                continue;
            }
            let seed = config.train.seed + k as u64;
            let mut config = config.clone();
            config.train.seed = seed;
            let entry = Entry {
                dir: entry.dir.join(format!("seed-{seed}")),
                ..entry.clone()
            };
            runs.push((k, entry, config));
        }
    }
    for (_, e, _) in &runs {
        if train::holds_anything(&e.dir) {
            if !force {
                bail!(
                    "{} already holds a run: pass --force to start the comparison over, or choose another --out",
                    e.dir.display()
                );
            }
            train::clear_run_dir(&e.dir)?;
        }
    }
    let mut ended = Ended::Finished;
    let mut done: Vec<(usize, Entry, Config)> = Vec::new();
    for (k, entry, config) in &runs {
        eprintln!(
            "compare: training {} ({}, seed {}) into {}",
            entry.name,
            config.constraint.kind.name(),
            config.train.seed,
            entry.dir.display()
        );
        let summary = train::train(config, &entry.dir, device, Start::Fresh, interrupt)?;
        done.push((*k, entry.clone(), config.clone()));
        if summary.ended == Ended::Interrupted {
            ended = Ended::Interrupted;
            break;
        }
    }
    let first: Vec<&(usize, Entry, Config)> = done.iter().filter(|(k, ..)| *k == 0).collect();
    let first_entries: Vec<Entry> = first.iter().map(|(_, e, _)| e.clone()).collect();
    let first_configs: Vec<Config> = first.iter().map(|(.., c)| c.clone()).collect();
    let over_seeds = if seeds > 1 {
        seeds_section(&done, entries)?
    } else {
        String::new()
    };
    let report = write_report(&first_entries, &first_configs, out, &over_seeds)?;
    Ok((report, ended))
}

/// Mean and population standard deviation (`None` for no values).
fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some((mean, var.sqrt()))
}

/// The report's section over seeds: per config the mean +- std over its seeds of the final SWD,
/// FID, KID and W estimate; then the verdict by FID (SWD where no run has FID): the config with
/// the lowest mean against each other, paired by seed, "beyond seed noise" where the mean
/// paired difference exceeds twice its standard error.
pub fn seeds_section(done: &[(usize, Entry, Config)], entries: &[Entry]) -> Result<String> {
    let mut per_config: Vec<(String, String, Vec<(usize, Row)>)> = Vec::new();
    for entry in entries {
        let mut rows = Vec::new();
        let mut kind = String::new();
        for (k, e, c) in done.iter().filter(|(_, e, _)| e.name == entry.name) {
            let records = metrics::read(&e.dir.join("metrics.jsonl"))
                .with_context(|| format!("run {} left no metrics", e.dir.display()))?;
            kind = c.constraint.kind.name().to_string();
            rows.push((*k, row(&e.name, &kind, &records, f64::INFINITY)));
        }
        per_config.push((entry.name.clone(), kind, rows));
    }
    let seeds = per_config.iter().map(|(.., r)| r.len()).max().unwrap_or(0);
    let cell = |v: Option<(f64, f64)>, digits: usize| {
        v.map_or("-".to_string(), |(m, s)| {
            format!("{m:.digits$} +- {s:.digits$}")
        })
    };
    let mut md = format!(
        "## Over {seeds} seeds\n\nEach config trained with {seeds} consecutive seeds (folders `NAME/seed-S`; the table above and the plots show the first); mean +- standard deviation over seeds of the last evaluation.\n\n| run | constraint | seeds | final SWD | final FID | final KID | W estimate |\n|---|---|---:|---:|---:|---:|---:|\n"
    );
    let column = |rows: &[(usize, Row)], f: fn(&Row) -> Option<f64>| -> Vec<f64> {
        rows.iter().filter_map(|(_, r)| f(r)).collect()
    };
    for (name, kind, rows) in &per_config {
        md += &format!(
            "| {name} | {kind} | {} | {} | {} | {} | {} |\n",
            rows.len(),
            cell(mean_std(&column(rows, |r| r.final_swd)), 2),
            cell(mean_std(&column(rows, |r| r.final_fid)), 2),
            cell(mean_std(&column(rows, |r| r.final_kid.map(|k| k.mean))), 4),
            cell(mean_std(&column(rows, |r| r.wasserstein)), 3),
        );
    }
    let by_fid = per_config
        .iter()
        .all(|(.., rows)| !rows.is_empty() && rows.iter().all(|(_, r)| r.final_fid.is_some()));
    let (metric, pick): (&str, fn(&Row) -> Option<f64>) = if by_fid {
        ("FID", |r| r.final_fid)
    } else {
        ("SWD", |r| r.final_swd)
    };
    let means: Vec<(usize, f64)> = per_config
        .iter()
        .enumerate()
        .filter_map(|(i, (.., rows))| mean_std(&column(rows, pick)).map(|(m, _)| (i, m)))
        .collect();
    let Some(&(best, best_mean)) = means.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return Ok(md);
    };
    md += &format!(
        "\n**Verdict by final {metric}** (lower is better): {} has the lowest mean ({best_mean:.2}).",
        per_config[best].0
    );
    for (i, (name, _, rows)) in per_config.iter().enumerate() {
        if i == best {
            continue;
        }
        // Pairs by seed index.
        let diffs: Vec<f64> = rows
            .iter()
            .filter_map(|(k, r)| {
                let theirs = pick(r)?;
                let ours = per_config[best]
                    .2
                    .iter()
                    .find(|(kb, _)| kb == k)
                    .and_then(|(_, rb)| pick(rb))?;
                Some(theirs - ours)
            })
            .collect();
        let wins = diffs.iter().filter(|d| **d > 0.0).count();
        let n = diffs.len();
        let verdict = if n >= 2 {
            let (m, s) = mean_std(&diffs).expect("values");
            let se = s * (n as f64 / (n as f64 - 1.0)).sqrt() / (n as f64).sqrt();
            if m > 2.0 * se {
                format!("ahead by {m:.2} +- {se:.2} (standard error): beyond seed noise")
            } else {
                format!("ahead by {m:.2} +- {se:.2} (standard error): within seed noise")
            }
        } else {
            "one seed: no verdict".to_string()
        };
        md += &format!(" Against {name}: lower on {wins} of {n} seeds, {verdict}.");
    }
    md += "\n\n";
    Ok(md)
}

/// What the report's table shows for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The run's name.
    pub name: String,
    /// The constraint kind.
    pub kind: String,
    /// Generator iterations done.
    pub iterations: usize,
    /// Training seconds per generator iteration.
    pub sec_per_iter: f64,
    /// The last SWD.
    pub final_swd: Option<f64>,
    /// The last SWD measured within the shortest run's training time, with its iteration.
    pub swd_at_equal_time: Option<(f64, usize)>,
    /// Last input-gradient norms on interpolates (mean, max), on real and generated (mean).
    pub grad: Option<(f64, f64, f64, f64)>,
    /// Largest relative error of the power-iteration sigma over the layers.
    pub sigma_error: Option<f64>,
    /// Product of the layers' kernel norms.
    pub bound: Option<f64>,
    /// The last Wasserstein estimate, mean f(real) - mean f(fake).
    pub wasserstein: Option<f64>,
    /// Product of the layers' certified norm bounds (the critic is 1-Lipschitz when <= 1).
    pub certified_bound: Option<f64>,
    /// The last FID (where the runs had Inception weights).
    pub final_fid: Option<f64>,
    /// The last KID.
    pub final_kid: Option<crate::fid::Kid>,
}

/// The table row of a run from its metrics; `equal_time` is the shortest run's training time.
pub fn row(name: &str, kind: &str, records: &[Record], equal_time: f64) -> Row {
    let last = records.last();
    let iterations = last.map_or(0, |r| r.step);
    let elapsed = last.map_or(0.0, |r| r.elapsed_s);
    let evaluated = || {
        records
            .iter()
            .filter_map(|r| r.swd.as_ref().map(|s| (r, s.mean)))
    };
    let diagnosed = records.iter().rev().find_map(|r| r.lipschitz.as_ref());
    Row {
        name: name.into(),
        kind: kind.into(),
        iterations,
        sec_per_iter: if iterations > 0 {
            elapsed / iterations as f64
        } else {
            f64::NAN
        },
        final_swd: evaluated().next_back().map(|(_, s)| s),
        swd_at_equal_time: evaluated()
            .rfind(|(r, _)| r.elapsed_s <= equal_time * (1.0 + 1e-9))
            .map(|(r, s)| (s, r.step)),
        grad: diagnosed.map(|l| {
            (
                l.grad_interpolates.mean,
                l.grad_interpolates.max,
                l.grad_real.mean,
                l.grad_fake.mean,
            )
        }),
        sigma_error: diagnosed.and_then(|l| l.max_sigma_error()),
        bound: diagnosed.map(|l| l.bound),
        wasserstein: last.map(|r| r.wasserstein),
        certified_bound: diagnosed
            .filter(|l| !l.operator_bounds.is_empty())
            .map(|l| l.operator_bounds.iter().product()),
        final_fid: records.iter().rev().find_map(|r| r.fid),
        final_kid: records.iter().rev().find_map(|r| r.kid),
    }
}

/// Three decimals, or three significant digits in scientific notation below 0.01.
fn num(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// The markdown table.
pub fn table(rows: &[Row], equal_time: f64) -> String {
    let mut out = format!(
        "| run | constraint | iterations | s/iteration | final SWD | SWD at {equal_time:.0} s (iteration) | grad norm interp. mean / max | grad norm real / fake mean | max sigma error | product bound | certified bound | W estimate | final FID | final KID |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let at = r
            .swd_at_equal_time
            .map_or("-".into(), |(s, step)| format!("{s:.2} ({step})"));
        let (interp, real_fake) = r.grad.map_or(("-".into(), "-".into()), |g| {
            (
                format!("{} / {}", num(g.0), num(g.1)),
                format!("{} / {}", num(g.2), num(g.3)),
            )
        });
        out += &format!(
            "| {} | {} | {} | {:.3} | {} | {at} | {interp} | {real_fake} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.kind,
            r.iterations,
            r.sec_per_iter,
            r.final_swd.map_or("-".into(), |s| format!("{s:.2}")),
            r.sigma_error.map_or("-".into(), |e| format!("{e:.1e}")),
            r.bound.map_or("-".into(), |b| format!("{b:.3e}")),
            r.certified_bound.map_or("-".into(), |b| format!("{b:.3e}")),
            r.wasserstein.map_or("-".into(), num),
            r.final_fid.map_or("-".into(), |f| format!("{f:.2}")),
            r.final_kid
                .map_or("-".into(), |k| format!("{:.4} +- {:.4}", k.mean, k.std)),
        );
    }
    out
}

/// Overlaid figures, one line per run.
fn figures(runs: &[(String, Vec<Record>)]) -> Vec<Figure<'static>> {
    let per_run = |f: fn(&Record) -> Option<f64>| -> Vec<Series> {
        runs.iter()
            .map(|(name, records)| Series::from_records(name.clone(), records, f))
            .collect()
    };
    let mut figures = vec![
        Figure {
            file: "swd.svg",
            title: "Sliced Wasserstein distance to the data (x1e3, lower is better)",
            y_label: "SWD",
            series: per_run(|r| r.swd.as_ref().map(|s| s.mean)),
        },
        Figure {
            file: "wasserstein.svg",
            title: "Wasserstein estimate: mean f(real) - mean f(fake)",
            y_label: "W estimate",
            series: per_run(|r| Some(r.wasserstein)),
        },
        Figure {
            file: "gradient_norms.svg",
            title: "Critic input-gradient norm on interpolates (mean)",
            y_label: "||grad_x f||",
            series: per_run(|r| r.lipschitz.as_ref().map(|l| l.grad_interpolates.mean)),
        },
        Figure {
            file: "lipschitz_bound.svg",
            title: "Product of the layers' kernel norms (log10)",
            y_label: "log10 bound",
            series: per_run(|r| r.lipschitz.as_ref().map(|l| l.bound.log10())),
        },
    ];
    if runs
        .iter()
        .any(|(_, records)| records.iter().any(|r| r.fid.is_some()))
    {
        figures.push(Figure {
            file: "fid.svg",
            title: "Fréchet Inception Distance to the data (lower is better)",
            y_label: "FID",
            series: per_run(|r| r.fid),
        });
    }
    figures
}

/// The newest sample grid of a run.
fn last_grid(dir: &Path) -> Option<PathBuf> {
    let mut grids: Vec<PathBuf> = std::fs::read_dir(dir.join("samples"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    grids.sort();
    grids.pop()
}

/// The grids in a row, 8 pixels of white between them, on one RGB image.
pub fn side_by_side(images: &[DynamicImage]) -> RgbImage {
    const GAP: u32 = 8;
    let width = images.iter().map(|i| i.width()).sum::<u32>() + GAP * (images.len() as u32 + 1);
    let height = images.iter().map(|i| i.height()).max().unwrap_or(0) + 2 * GAP;
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let mut x = GAP;
    for image in images {
        out.copy_from(&image.to_rgb8(), x, GAP)
            .expect("the canvas holds every grid");
        x += image.width() + GAP;
    }
    out
}

/// Writes `OUT/report.md`, `OUT/plots/*.svg` and `OUT/grids.png` for the runs in `entries`.
pub fn write_report(
    entries: &[Entry],
    configs: &[Config],
    out: &Path,
    over_seeds: &str,
) -> Result<PathBuf> {
    let mut runs = Vec::new();
    for e in entries {
        let records = metrics::read(&e.dir.join("metrics.jsonl"))
            .with_context(|| format!("run {} left no metrics", e.name))?;
        runs.push((e.name.clone(), records));
    }
    let equal_time = runs
        .iter()
        .filter_map(|(_, r)| r.last().map(|r| r.elapsed_s))
        .fold(f64::INFINITY, f64::min);
    let rows: Vec<Row> = runs
        .iter()
        .zip(configs)
        .map(|((name, records), c)| row(name, c.constraint.kind.name(), records, equal_time))
        .collect();
    let plots = out.join("plots");
    for figure in figures(&runs) {
        plot::draw(&plots, &figure)?;
    }
    let grids: Vec<(String, DynamicImage)> = entries
        .iter()
        .filter_map(|e| {
            let path = last_grid(&e.dir)?;
            image::open(&path).ok().map(|i| (e.name.clone(), i))
        })
        .collect();
    if !grids.is_empty() {
        let images: Vec<DynamicImage> = grids.iter().map(|(_, i)| i.clone()).collect();
        save_png(
            &DynamicImage::ImageRgb8(side_by_side(&images)),
            &out.join("grids.png"),
        )?;
    }
    let mut md = String::from("# wgan-train compare\n\n");
    let c0 = &configs[0];
    md += &format!(
        "Same seed ({}), data ({}), batch {} and budget for every run; SWD x1e3 over {} images per set against the data (lower is better); times are training seconds (diagnostics, evaluation and plotting left out).\n\n",
        c0.train.seed,
        c0.data.dir.display(),
        c0.train.batch_size,
        c0.output.eval_images
    );
    md += &table(&rows, equal_time);
    md += "\nGradient norms are ||grad_x f|| of the critic on a batch of the data, generated images and their interpolates at the last metrics line; the sigma error is the power iteration's largest relative error over the layers (spectral_norm, spectral_penalty); the product bound multiplies the layers' kernel norms as used in the forward pass (matrix views); the certified bound multiplies certified upper bounds on each layer's norm as an operator (the critic is 1-Lipschitz where it is <= 1); W is the last Wasserstein estimate, mean f(real) - mean f(fake); FID and KID (pytorch-fid's Inception, where `output.inception` or WGAN_TRAIN_INCEPTION gives its weights) use the SWD's images.\n\n";
    md += over_seeds;
    md += "## Plots\n\n";
    for f in [
        "swd",
        "fid",
        "wasserstein",
        "gradient_norms",
        "lipschitz_bound",
    ] {
        if plots.join(format!("{f}.svg")).exists() {
            md += &format!("![{f}](plots/{f}.svg)\n\n");
        }
    }
    if !grids.is_empty() {
        let names: Vec<&str> = grids.iter().map(|(n, _)| n.as_str()).collect();
        md += &format!(
            "## Final sample grids\n\nLeft to right: {}.\n\n![grids](grids.png)\n",
            names.join(", ")
        );
    }
    let path = out.join("report.md");
    crate::atomic::write_atomic(&path, md.as_bytes())?;
    Ok(path)
}
