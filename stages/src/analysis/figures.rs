//! Figures as SVG text, drawn with plotters.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// A diverging colour for `v` in [-max, max]: blue below zero, white at zero, red above.
fn diverging(v: f64, max: f64) -> RGBColor {
    let t = if max > 0.0 {
        (v / max).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fade = |c: u8, t: f64| (255.0 - (255.0 - c as f64) * t.abs()) as u8;
    if t >= 0.0 {
        RGBColor(255, fade(40, t), fade(40, t))
    } else {
        RGBColor(fade(40, t), fade(90, t), 255)
    }
}

/// A heat map of saturation mutagenesis: x is the distance to the TSS (far left, TSS right), y
/// the substituted base, colour the change in the prediction. `cells` holds (distance, base,
/// delta) for every substitution; `title` names the sequence and target.
pub fn mutagenesis_heatmap(cells: &[(usize, u8, f32)], title: &str) -> Result<String, String> {
    let len = cells.iter().map(|c| c.0).max().unwrap_or(1);
    let max = cells.iter().map(|c| c.2.abs() as f64).fold(0.0, f64::max);
    let mut svg = String::new();
    {
        let width = (len as u32 * 3).clamp(600, 2400);
        let root = SVGBackend::with_string(&mut svg, (width, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(35)
            .build_cartesian_2d((len as f64 + 0.5)..0.5, 0f64..4f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("bases to the TSS")
            .y_desc("new base")
            .y_labels(4)
            .y_label_formatter(&|y| {
                let i = (*y - 0.5).round() as usize;
                ["A", "C", "G", "T"]
                    .get(i)
                    .copied()
                    .unwrap_or("")
                    .to_string()
            })
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(cells.iter().map(|&(d, base, delta)| {
                let row = b"ACGT".iter().position(|&b| b == base).unwrap_or(0) as f64;
                let x = d as f64;
                Rectangle::new(
                    [(x + 0.5, row), (x - 0.5, row + 1.0)],
                    diverging(delta as f64, max).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The positional-importance map: x is the distance to the TSS (far left, TSS right), one row
/// per k-mer size, colour the mean |change in prediction| (white at 0, red at the largest).
pub fn importance_heatmap(
    cells: &[super::positional::Cell],
    title: &str,
) -> Result<String, String> {
    let far = cells.iter().map(|c| c.to).max().unwrap_or(1);
    let mut ks: Vec<usize> = cells.iter().map(|c| c.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let max = cells.iter().map(|c| c.mean_abs_change).fold(0.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 120 + 40 * ks.len() as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(far as f64..0f64, 0f64..ks.len() as f64)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("bases to the TSS")
            .y_desc("k")
            .y_labels(ks.len())
            .y_label_formatter(&|y| {
                let i = (*y - 0.5).round() as usize;
                ks.get(i).map(|k| k.to_string()).unwrap_or_default()
            })
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(cells.iter().map(|c| {
                let row = ks.iter().position(|&k| k == c.k).unwrap_or(0) as f64;
                Rectangle::new(
                    [(c.to as f64, row), ((c.from - 1) as f64, row + 1.0)],
                    diverging(c.mean_abs_change, max).filled(),
                )
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One panel of a predicted-against-observed figure: the tissue, its (observed, predicted)
/// pairs, and the squared Pearson correlation shown in its title.
pub struct ScatterPanel {
    /// Tissue (target) name.
    pub target: String,
    /// (observed, predicted) pairs.
    pub points: Vec<(f64, f64)>,
    /// Squared Pearson correlation of the pairs.
    pub pearson_r2: f64,
}

/// Predicted against observed values, one panel per tissue (three to a row), with the diagonal
/// y = x; axes share one range per panel so that the diagonal means "exact".
pub fn scatter(panels: &[ScatterPanel], title: &str) -> Result<String, String> {
    let n = panels.len().max(1);
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (330 * cols as u32, 300 * rows as u32 + 40))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let body = root
            .titled(title, ("sans-serif", 18))
            .map_err(|e| e.to_string())?;
        for (area, panel) in body.split_evenly((rows, cols)).iter().zip(panels) {
            let (lo, hi) = padded(
                panel.points.iter().flat_map(|&(o, p)| [o, p]),
                0.05,
                (0.0, 1.0),
            );
            let mut chart = ChartBuilder::on(area)
                .caption(
                    if panel.pearson_r2.is_nan() {
                        // A constant prediction, or too few points.
                        format!("{} (Pearson r² undefined)", panel.target)
                    } else {
                        format!("{} (Pearson r² {:.3})", panel.target, panel.pearson_r2)
                    },
                    ("sans-serif", 14),
                )
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(lo..hi, lo..hi)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc("observed")
                .y_desc("predicted")
                .draw()
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(lo, lo), (hi, hi)],
                    BLACK.mix(0.4),
                )))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(
                    panel
                        .points
                        .iter()
                        .filter(|(o, p)| o.is_finite() && p.is_finite())
                        .map(|&(o, p)| Circle::new((o, p), 2, BLUE.mix(0.5).filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A chart with two f64 axes, drawn into an SVG string.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The legend of every labelled series, on a translucent white box.
fn draw_legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())
}

/// The range of the finite `values`, widened by `share` of its width on each side (at least
/// 1e-9); `empty` when there are none.
fn padded(values: impl Iterator<Item = f64>, share: f64, empty: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return empty;
    }
    let pad = ((hi - lo) * share).max(1e-9);
    (lo - pad, hi + pad)
}

/// One panel of a PCA figure: a title (what was projected, with the variance explained) and a
/// labelled point per item, coloured by its group.
pub struct PcaPanel {
    /// The panel's title.
    pub title: String,
    /// Axis names (e.g. `PC1 (41%)`).
    pub axes: (String, String),
    /// (label, group, x, y) per point.
    pub points: Vec<(String, String, f64, f64)>,
}

/// PCA scatters side by side, points labelled and coloured by group (one legend entry each,
/// titled `attribute`).
pub fn pca(panels: &[PcaPanel], attribute: &str, title: &str) -> Result<String, String> {
    let mut groups: Vec<&str> = panels
        .iter()
        .flat_map(|p| p.points.iter().map(|q| q.1.as_str()))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let colour = |g: &str| Palette99::pick(groups.iter().position(|&x| x == g).unwrap_or(0));
    let n = panels.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (480 * n, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let body = root
            .titled(title, ("sans-serif", 18))
            .map_err(|e| e.to_string())?;
        for (area, panel) in body.split_evenly((1, n as usize)).iter().zip(panels) {
            let (x0, x1) = padded(panel.points.iter().map(|p| p.2), 0.15, (-1.0, 1.0));
            let (y0, y1) = padded(panel.points.iter().map(|p| p.3), 0.15, (-1.0, 1.0));
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 14))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(45)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(&panel.axes.0)
                .y_desc(&panel.axes.1)
                .draw()
                .map_err(|e| e.to_string())?;
            for &g in &groups {
                let c = colour(g);
                chart
                    .draw_series(
                        panel
                            .points
                            .iter()
                            .filter(|p| p.1 == g)
                            .map(|p| Circle::new((p.2, p.3), 5, c.filled())),
                    )
                    .map_err(|e| e.to_string())?
                    .label(format!("{attribute}: {g}"))
                    .legend(move |(x, y)| Circle::new((x, y), 5, c.filled()));
            }
            chart
                .draw_series(
                    panel.points.iter().map(|p| {
                        Text::new(p.0.clone(), (p.2, p.3), ("sans-serif", 11).into_font())
                    }),
                )
                .map_err(|e| e.to_string())?;
            draw_legend(&mut chart)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Training curves: one line per series of (x, y) points, on shared axes, with a legend.
pub fn curves(
    series: &[(String, Vec<(f64, f64)>)],
    x_desc: &str,
    y_desc: &str,
    title: &str,
) -> Result<String, String> {
    let all = || {
        series
            .iter()
            .flat_map(|s| s.1.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (x0, x1) = all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (x0, x1) = if x0 > x1 {
        (0.0, 1.0)
    } else {
        (x0, x1.max(x0 + 1e-9))
    };
    let (y0, y1) = padded(all().map(|p| p.1), 0.05, (0.0, 1.0));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in series.iter().enumerate() {
            let c = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            let marks = points.len() <= 60;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    points.clone(),
                    c.stroke_width(2),
                )))
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            if marks {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
        }
        draw_legend(&mut chart)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_is_svg_with_one_cell_per_substitution() {
        let cells: Vec<(usize, u8, f32)> = (1..=10)
            .flat_map(|d| [(d, b'A', 0.5), (d, b'C', -0.2), (d, b'G', 0.0)])
            .collect();
        let svg = mutagenesis_heatmap(&cells, "p1: leaf").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        assert!(svg.contains("p1: leaf"));
        assert!(svg.matches("<rect").count() >= 30);
        assert_eq!(diverging(1.0, 1.0), RGBColor(255, 40, 40));
        assert_eq!(diverging(0.0, 1.0), RGBColor(255, 255, 255));
    }

    #[test]
    fn scatter_has_a_panel_per_tissue_and_a_point_per_pair() {
        let panels: Vec<ScatterPanel> = ["leaf", "root", "seed", "flower"]
            .iter()
            .map(|t| ScatterPanel {
                target: t.to_string(),
                points: (0..25).map(|i| (i as f64, i as f64 * 0.9 + 0.3)).collect(),
                pearson_r2: 1.0,
            })
            .collect();
        let svg = scatter(&panels, "finetune: predicted against observed").unwrap();
        assert!(svg.starts_with("<svg"));
        for t in [
            "leaf",
            "root",
            "seed",
            "flower",
            "finetune: predicted against observed",
        ] {
            assert!(svg.contains(t), "{t}");
        }
        assert_eq!(svg.matches("<circle").count(), 100);
        // No points at all still draws.
        let empty = [ScatterPanel {
            target: "leaf".into(),
            points: vec![],
            pearson_r2: f64::NAN,
        }];
        let svg = scatter(&empty, "empty").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("leaf (Pearson r² undefined)"));
    }

    #[test]
    fn importance_map_has_a_cell_per_k_and_bin() {
        let cells: Vec<super::super::positional::Cell> = [1, 2, 3]
            .iter()
            .flat_map(|&k| {
                (0..4).map(move |b| super::super::positional::Cell {
                    k,
                    from: b * 50 + 1,
                    to: (b + 1) * 50,
                    mean_abs_change: (4 - b) as f64 * 0.1,
                    n: 10,
                })
            })
            .collect();
        let svg = importance_heatmap(&cells, "importance").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("importance"));
        assert!(svg.matches("<rect").count() >= 12);
        assert!(svg.contains("bases to the TSS"));
    }

    #[test]
    fn pca_panels_label_every_point_and_legend_every_group() {
        let points = vec![
            ("zea_mays".to_string(), "monocot".to_string(), 1.0, 0.5),
            ("sorghum".to_string(), "monocot".to_string(), 0.9, 0.4),
            ("arabidopsis".to_string(), "eudicot".to_string(), -1.0, 0.1),
        ];
        let panel = |t: &str| PcaPanel {
            title: t.to_string(),
            axes: ("PC1 (60%)".into(), "PC2 (30%)".into()),
            points: points.clone(),
        };
        let svg = pca(
            &[panel("mean embedding"), panel("1-mer composition")],
            "clade",
            "species",
        )
        .unwrap();
        assert!(svg.starts_with("<svg"));
        for t in [
            "mean embedding",
            "1-mer composition",
            "zea_mays",
            "arabidopsis",
            "clade: monocot",
            "clade: eudicot",
            "PC1 (60%)",
        ] {
            assert!(svg.contains(t), "{t}");
        }
        // Three points per panel plus a legend mark per group in each.
        assert_eq!(svg.matches("<circle").count(), 2 * (3 + 2));
    }

    #[test]
    fn curves_draw_a_line_per_series_with_a_legend() {
        let series = vec![
            (
                "loss".to_string(),
                (0..100)
                    .map(|i| (i as f64, 5.0 - i as f64 * 0.01))
                    .collect(),
            ),
            (
                "val_loss".to_string(),
                vec![(49.0, 4.6), (99.0, 4.2), (120.0, f64::NAN)],
            ),
        ];
        let svg = curves(&series, "step", "loss", "pretrain").unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("val_loss") && svg.contains("pretrain"));
        assert!(svg.matches("<polyline").count() >= 2);
        // Only the short series gets point marks.
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(curves(&[], "x", "y", "nothing")
            .unwrap()
            .starts_with("<svg"));
    }
}
