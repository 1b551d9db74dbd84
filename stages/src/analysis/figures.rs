//! Figures as SVG text, drawn with plotters.

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
}
