//! The plot: scenario 1's ops/s per peer as horizontal bars on a log scale, written as SVG by
//! hand (no font or drawing library needed).

use std::fmt::Write;

use crate::Row;

const WIDTH: f64 = 960.0;
const BAR: f64 = 14.0;
const LABEL: f64 = 300.0;

pub fn single_process_chart(rows: &[Row]) -> String {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.scenario.starts_with("1.") && r.unit == "ops/s")
        .collect();
    let mut scenarios: Vec<&str> = Vec::new();
    for row in &rows {
        if !scenarios.contains(&row.scenario.as_str()) {
            scenarios.push(&row.scenario);
        }
    }
    let max = rows
        .iter()
        .map(|r| r.value)
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(1.0);
    // Start one decade below the slowest peer, so the bars use the width.
    let slowest = rows
        .iter()
        .map(|r| r.value)
        .fold(f64::INFINITY, f64::min)
        .max(1.0);
    let min = (slowest.log10().floor() - 1.0).clamp(0.0, max - 1.0);
    let plot_width = WIDTH - LABEL - 80.0;
    let x =
        |value: f64| LABEL + plot_width * ((value.max(1.0).log10() - min).max(0.0) / (max - min));
    let height = 60.0
        + scenarios
            .iter()
            .map(|s| 28.0 + BAR * rows.iter().filter(|r| r.scenario == *s).count() as f64)
            .sum::<f64>();
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">One process, small values: operations per second (log scale, more is better)</text>"#
    );
    for decade in (min as u32)..=(max as u32) {
        let value = 10f64.powi(decade as i32);
        let gx = x(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{gx:.1}" y1="30" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            height - 10.0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{gx:.1}" y="42" text-anchor="middle" fill="#666">1e{decade}</text>"##
        );
    }
    let mut y = 56.0;
    for scenario in scenarios {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
            y + 10.0,
            escape(scenario)
        );
        y += 16.0;
        for row in rows.iter().filter(|r| r.scenario == scenario) {
            let color = match row.peer.as_str() {
                p if p.starts_with("ultradict") => "#1f77b4",
                p if p.starts_with("std") => "#7f7f7f",
                _ => "#ff7f0e",
            };
            let _ = writeln!(
                svg,
                r#"<text x="20" y="{:.1}">{}</text>"#,
                y + BAR - 4.0,
                escape(&row.peer)
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{LABEL}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                (x(row.value) - LABEL).max(1.0),
                BAR - 3.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                x(row.value) + 4.0,
                y + BAR - 4.0,
                human(row.value)
            );
            y += BAR;
        }
        y += 12.0;
    }
    svg.push_str("</svg>\n");
    svg
}

fn human(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.1}M/s", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k/s", v / 1e3),
        v => format!("{v:.0}/s"),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
